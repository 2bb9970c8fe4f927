//! The NATS baseline (`--baseline nats --nats URL`): the same workload run by NATS clients
//! straight against a `nats-server`, no broker on the way. What NATS alone carries between the
//! same hosts is the ceiling of brokers joined through it (`--sub-broker`): a message crossing
//! brokers goes publisher → broker → NATS → broker → subscriber.
//!
//! ```text
//!  publishers (async-nats, a client each) ──► nats-server ──► subscribers (a client each)
//!       ▲                                                            │
//!       └──── the same window, stamps and tallies as workload ◄──────┘
//! ```
//!
//! Why here, as a baseline of `bench`, rather than a small binary of its own: the NATS run must
//! be measured by the same code as the broker's (the same stamps in the same payload, the same
//! window, loss and duplicate accounting, medians and report), and alternate with it in one
//! run, which only living beside [`super::workload`] gives. The client is async-nats, the one
//! the brokers' cluster bridge uses (so this is the ceiling the bridge can reach), already built
//! for the broker: the CLI gains a dependency line, not a crate.
//!
//! Each payload is what a broker puts on NATS for a bench message: the data as JSON text (the
//! stamped string, in quotes), with no headers (brokers add theirs; that is their cost).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::{Client, ConnectOptions};
use bytes::BytesMut;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::payload::{self, Stamp, Tally};
use super::workload::{Measured, Params, Publishers, Run, Shared, SubscriberEnd, Subscribers};

/// Messages a publisher hands to its client before it looks at the window again.
const BATCH: u64 = 64;
/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A subject of its own for each run, so that nothing else on the server (brokers' subjects
/// are under `bb.`) reaches the bench's subscribers, and no late message of a run the next.
fn subject() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench.nats.{}.{}",
        std::process::id(),
        RUNS.fetch_add(1, Relaxed)
    )
}

/// Connects one client. Subscribers' queues hold more than the window, so that NATS never
/// cuts one off as slow when the bench keeps within it.
async fn connect(url: &str, p: &Params) -> anyhow::Result<Client> {
    let queue = usize::try_from(p.window.saturating_mul(2))
        .unwrap_or(usize::MAX)
        .max(65_536);
    let connecting = ConnectOptions::new()
        .name("breadboard bench")
        .subscription_capacity(queue)
        .connect(url);
    tokio::time::timeout(SETUP_TIMEOUT, connecting)
        .await
        .context("connecting to NATS took too long")?
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// Runs the workload once against the `nats-server` at `url` (throughput mode). `probe` is
/// called right before the first message and right after the last delivery.
///
/// # Errors
/// A client could not connect or subscribe, or the workload is not one this baseline runs.
pub async fn run(
    url: &str,
    p: &Params,
    progress: &ProgressBar,
    probe: &mut dyn FnMut(),
) -> anyhow::Result<Measured> {
    anyhow::ensure!(
        p.rate.is_none(),
        "the NATS baseline measures throughput; latency mode (--rate) is for brokers"
    );
    let run = Run::new(p)?;
    let subject = subject();
    let mut subscribers: Subscribers = JoinSet::new();
    for i in 0..p.subs {
        let client = connect(url, p).await?;
        let sub = client
            .subscribe(subject.clone())
            .await
            .context("cannot subscribe in NATS")?;
        // The server has the subscription once it answered the flush's PING.
        client.flush().await.context("NATS flush")?;
        subscribers.spawn(receive(
            i,
            client,
            sub,
            run.shared.clone(),
            p.pubs,
            p.msgs,
            run.stop.clone(),
        ));
    }
    let mut clients = Vec::with_capacity(p.pubs);
    for _ in 0..p.pubs {
        clients.push(connect(url, p).await?);
    }
    let data = serde_json::to_vec(&payload::template(p.size))?;
    let at = payload::find(&data).context("no marker in the payload")?;

    probe();
    let start = Instant::now();
    let mut publishers: Publishers = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let (index, count) = (i as u16, p.share(i));
        let (data, subject, shared) = (data.clone(), subject.clone(), run.shared.clone());
        publishers.spawn(async move {
            let sent = publish(client, subject, (data, at), index, count, shared).await;
            (index, sent)
        });
    }
    run.finish(p, start, (publishers, subscribers), progress, probe)
        .await
}

/// Publishes `count` stamped copies of `data` as fast as the window allows; flushes at the end.
async fn publish(
    client: Client,
    subject: String,
    (data, at): (Vec<u8>, usize),
    index: u16,
    count: u64,
    shared: Arc<Shared>,
) -> io::Result<(u64, Instant)> {
    let subject = async_nats::Subject::from(subject);
    let batch = BATCH.min(shared.window.max(1));
    let mut seq = 0;
    while seq < count {
        let n = batch.min(count - seq);
        shared.claim(n).await;
        let sent_ns = shared.now_ns();
        // One allocation for the batch; each message is a slice of it.
        let mut buf = BytesMut::with_capacity(data.len() * n as usize);
        for _ in 0..n {
            buf.extend_from_slice(&data);
            let start = buf.len() - data.len();
            let stamp = Stamp {
                publisher: index,
                seq,
                sent_ns,
            };
            payload::write(&mut buf[start..], at, stamp);
            seq += 1;
        }
        let mut buf = buf.freeze();
        while !buf.is_empty() {
            let message = buf.split_to(data.len());
            client
                .publish(subject.clone(), message)
                .await
                .map_err(io::Error::other)?;
        }
        shared.written.fetch_add(n, SeqCst);
    }
    client.flush().await.map_err(io::Error::other)?;
    Ok((seq, Instant::now()))
}

/// Subscriber `i`: tallies what arrives until it has `expected` messages or the run stops.
async fn receive(
    i: usize,
    client: Client,
    mut sub: async_nats::Subscriber,
    shared: Arc<Shared>,
    pubs: usize,
    expected: u64,
    stop: CancellationToken,
) -> io::Result<SubscriberEnd> {
    let mut tally = Tally::new(pubs);
    let mut done = None;
    let receiving = async {
        while tally.received < expected {
            let Some(msg) = sub.next().await else { break };
            if let Some(stamp) = payload::read(&msg.payload) {
                if tally.record(stamp) {
                    shared.progress(i, tally.received);
                }
            }
        }
        if tally.received >= expected {
            done = Some(Instant::now());
        }
        shared.opened.notify_waiters();
    };
    tokio::select! {
        () = receiving => {}
        () = stop.cancelled() => {}
    }
    Ok(SubscriberEnd {
        open: Box::new((client, sub)),
        tally,
        latency: None,
        done,
    })
}
