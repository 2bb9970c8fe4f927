//! One run of the pub/sub workload against one target (the broker or the relay).
//!
//! ```text
//!  publishers ── pre-encoded frames, many per write ──► target ──► subscribers
//!       ▲                                                             │
//!       └──── window: wait while the slowest subscriber is ◄──────────┘
//!             more than `window` messages behind
//! ```
//!
//! Subscribers connect and subscribe first; then every publisher sends its share. Each
//! subscriber checks every stamp (see [`payload`](super::payload)), so losses and duplicates are
//! counted, not assumed. In latency mode each publisher paces itself on a thread of its own and
//! subscribers record `now - sent` in an HdrHistogram.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use proto::{ClientFrame, Encoding, Publish, ServerFrame, TopicFilter, TopicName};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::payload::{self, Stamp, Tally};
use super::wire;

/// The topic every bench message goes to.
const TOPIC: &str = "bench/t";
/// Frames a throughput publisher writes at once (fewer when the window is smaller).
const BATCH: u64 = 64;
/// How long setup steps (connect, subscribe) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A run stops when no subscriber made progress for this long after publishing ended.
const STALL: Duration = Duration::from_secs(3);

/// What to run the workload against.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    /// The target's address.
    pub addr: SocketAddr,
    /// The relay (paths `/sub` and `/pub`, no protocol) rather than a breadboard broker.
    pub relay: bool,
}

/// The workload.
#[derive(Debug, Clone)]
pub struct Params {
    /// Publishers.
    pub pubs: usize,
    /// Subscribers, each subscribed to everything published.
    pub subs: usize,
    /// Messages in total, shared among the publishers.
    pub msgs: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// How clients encode their frames.
    pub encoding: Encoding,
    /// Most messages published and not yet received by every subscriber.
    pub window: u64,
    /// Messages per second over all publishers (latency mode), or as fast as possible.
    pub rate: Option<f64>,
    /// The whole run, setup included, stops after this long.
    pub timeout: Duration,
}

impl Params {
    /// How many messages publisher `i` sends.
    pub fn share(&self, i: usize) -> u64 {
        let pubs = self.pubs as u64;
        self.msgs / pubs + u64::from((i as u64) < self.msgs % pubs)
    }
}

/// What one run measured (the caller adds the target's CPU and memory).
#[derive(Debug)]
pub struct Measured {
    /// Messages each publisher was to send: what every subscriber should receive.
    pub asked: Vec<u64>,
    /// Messages the publishers actually wrote (less than asked when a run is cut short).
    pub published: u64,
    /// Seconds from the start to the last publisher's last write.
    pub publish_s: f64,
    /// Seconds from the start to the last subscriber's last message.
    pub elapsed_s: f64,
    /// Each subscriber's tally.
    pub tallies: Vec<Tally>,
    /// Latencies in ns, merged over subscribers (latency mode).
    pub latency: Option<Histogram<u64>>,
}

impl Measured {
    /// Messages that should have been delivered, summed over subscribers.
    pub fn expected(&self) -> u64 {
        self.asked.iter().sum::<u64>() * self.tallies.len() as u64
    }

    /// Messages delivered, summed over subscribers.
    pub fn delivered(&self) -> u64 {
        self.tallies.iter().map(|t| t.received).sum()
    }

    /// Messages not delivered, summed over subscribers.
    pub fn lost(&self) -> u64 {
        self.tallies.iter().map(|t| t.lost(&self.asked)).sum()
    }
}

/// A counter on a cache line of its own: each subscriber writes one, publishers read them all.
#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// State shared by the publishers and subscribers of one run.
struct Shared {
    /// Messages received so far, per subscriber.
    received: Vec<Padded>,
    /// Messages publishers have claimed the right to send so far.
    claimed: AtomicU64,
    /// Messages publishers have written so far.
    written: AtomicU64,
    window: u64,
    /// Publishers waiting for the window to open.
    waiting: AtomicUsize,
    opened: Notify,
    /// Time zero for stamps.
    origin: Instant,
}

impl Shared {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.0.load(SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn total_received(&self) -> u64 {
        self.received.iter().map(|r| r.0.load(SeqCst)).sum()
    }

    fn fits(&self, upto: u64) -> bool {
        upto <= self.slowest().saturating_add(self.window)
    }

    /// Claims `n` more messages; returns once they fit in the window.
    async fn claim(&self, n: u64) {
        let upto = self.claimed.fetch_add(n, SeqCst) + n;
        while !self.fits(upto) {
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            self.waiting.fetch_add(1, SeqCst);
            if !self.fits(upto) {
                // The timeout only guards against a missed wake-up; subscribers notify.
                let _ = tokio::time::timeout(Duration::from_millis(5), opened).await;
            }
            self.waiting.fetch_sub(1, SeqCst);
        }
    }

    /// The blocking version of [`Shared::claim`], for paced publishers on their own thread.
    fn claim_blocking(&self, n: u64) {
        let upto = self.claimed.fetch_add(n, SeqCst) + n;
        while !self.fits(upto) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Subscriber `i` has received `count` messages.
    fn progress(&self, i: usize, count: u64) {
        self.received[i].0.store(count, SeqCst);
        // Waking publishers costs a lock: do it only when one waits, every 64 messages.
        if count % 64 == 0 && self.waiting.load(SeqCst) > 0 {
            self.opened.notify_waiters();
        }
    }

    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

fn encode(frame: &ClientFrame, enc: Encoding) -> (u8, Vec<u8>) {
    let opcode = match enc {
        Encoding::Json => wire::TEXT,
        Encoding::MsgPack => wire::BINARY,
    };
    (opcode, proto::encode_client(frame, enc))
}

/// The WebSocket frame a publisher sends, and where its stamp's marker is.
fn publish_frame(size: usize, enc: Encoding) -> anyhow::Result<(Vec<u8>, usize)> {
    let frame = ClientFrame::Pub(Publish {
        topic: TopicName::new(TOPIC)?,
        data: payload::template(size).into(),
        retain: false,
        reply: None,
        id: None,
    });
    let (opcode, bytes) = encode(&frame, enc);
    let mut ws = Vec::with_capacity(bytes.len() + 14);
    wire::put_frame(&mut ws, opcode, &bytes);
    let at = payload::find(&ws).context("no marker in the encoded frame")?;
    Ok((ws, at))
}

async fn connect_subscriber(ep: Endpoint, enc: Encoding) -> anyhow::Result<wire::Conn> {
    let path = if ep.relay { "/sub" } else { "/" };
    let mut conn = wire::connect(ep.addr, path).await?;
    if !ep.relay {
        let (opcode, sub) = encode(
            &ClientFrame::Sub {
                topic: TopicFilter::new(TOPIC)?,
                id: Some(1),
            },
            enc,
        );
        let mut out = Vec::new();
        wire::put_frame(&mut out, opcode, &sub);
        conn.writer.write_all(&out).await?;
    }
    // The broker's `ok`, or the relay's `ready`: from then on, nothing published is missed.
    loop {
        let frame = conn
            .reader
            .next()
            .await?
            .context("closed while subscribing")?;
        match frame.opcode {
            wire::TEXT | wire::BINARY if ep.relay => break,
            wire::TEXT | wire::BINARY => match proto::decode_server(frame.payload, enc) {
                Ok(ServerFrame::Ok { id: 1 }) => break,
                other => anyhow::bail!("unexpected answer to subscribe: {other:?}"),
            },
            _ => {}
        }
    }
    Ok(conn)
}

struct SubscriberEnd {
    conn: wire::Conn,
    tally: Tally,
    latency: Option<Histogram<u64>>,
    done: Option<Instant>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

async fn subscribe_loop(
    i: usize,
    mut conn: wire::Conn,
    shared: Arc<Shared>,
    pubs: usize,
    expected: u64,
    measure_latency: bool,
    stop: CancellationToken,
) -> io::Result<SubscriberEnd> {
    let mut tally = Tally::new(pubs);
    let mut latency = measure_latency.then(histogram);
    let mut done = None;
    let receive = async {
        while tally.received < expected {
            let Some(frame) = conn.reader.next().await? else {
                break;
            };
            match frame.opcode {
                wire::TEXT | wire::BINARY => {
                    let Some(stamp) = payload::read(frame.payload) else {
                        continue;
                    };
                    if tally.record(stamp) {
                        if let Some(h) = &mut latency {
                            h.saturating_record(shared.now_ns().saturating_sub(stamp.sent_ns));
                        }
                        shared.progress(i, tally.received);
                    }
                }
                wire::PING => {
                    let payload = frame.payload.to_vec();
                    wire::pong(&mut conn.writer, &payload).await?;
                }
                wire::CLOSE => break,
                _ => {}
            }
        }
        if tally.received >= expected {
            done = Some(Instant::now());
        }
        // Publishers waiting for this subscriber must see its last count.
        shared.opened.notify_waiters();
        io::Result::Ok(())
    };
    tokio::select! {
        result = receive => result?,
        _ = stop.cancelled() => {}
    }
    Ok(SubscriberEnd {
        conn,
        tally,
        latency,
        done,
    })
}

/// Sends `count` messages as fast as the window allows, many frames per write.
async fn publish_fast(
    index: u16,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    (template, at): (Vec<u8>, usize),
    count: u64,
    shared: Arc<Shared>,
) -> io::Result<(u64, Instant)> {
    let batch = BATCH.min(shared.window.max(1));
    let mut out = Vec::with_capacity(template.len() * batch as usize);
    let mut seq = 0;
    while seq < count {
        let n = batch.min(count - seq);
        shared.claim(n).await;
        out.clear();
        let sent_ns = shared.now_ns();
        for _ in 0..n {
            let start = out.len();
            out.extend_from_slice(&template);
            let stamp = Stamp {
                publisher: index,
                seq,
                sent_ns,
            };
            payload::write(&mut out[start..], at, stamp);
            seq += 1;
        }
        writer.write_all(&out).await?;
        shared.written.fetch_add(n, SeqCst);
    }
    Ok((seq, Instant::now()))
}

/// When a paced publisher sends: from `start`, `rate` messages per second.
struct Pacing {
    rate: f64,
    start: Instant,
}

/// Sends `count` messages at the pace given, one write each, stamped just before it;
/// runs on a thread of its own so that pacing is not limited by the runtime's timer.
fn publish_paced(
    index: u16,
    mut stream: std::net::TcpStream,
    (mut frame, at): (Vec<u8>, usize),
    count: u64,
    pacing: Pacing,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> io::Result<(u64, Instant)> {
    use std::io::Write;
    let interval = Duration::from_secs_f64(1.0 / pacing.rate);
    let mut seq = 0;
    while seq < count && !stop.is_cancelled() {
        let due = pacing.start + interval.mul_f64(seq as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        shared.claim_blocking(1);
        let stamp = Stamp {
            publisher: index,
            seq,
            sent_ns: shared.now_ns(),
        };
        payload::write(&mut frame, at, stamp);
        stream.write_all(&frame)?;
        shared.written.fetch_add(1, SeqCst);
        seq += 1;
    }
    Ok((seq, Instant::now()))
}

/// Reads and discards what the broker sends a publisher (answering pings).
async fn drain(mut reader: wire::FrameReader<tokio::net::tcp::OwnedReadHalf>) {
    while let Ok(Some(frame)) = reader.next().await {
        if frame.opcode == wire::CLOSE {
            break;
        }
    }
}

/// Runs the workload once. `probe` is called right before the first message and right after
/// the last delivery, so the caller can read the target's CPU time in between.
///
/// # Errors
/// Setup failed (connect, subscribe); losses are not errors, they are counted.
pub async fn run(
    ep: Endpoint,
    p: &Params,
    progress: &ProgressBar,
    probe: &mut dyn FnMut(),
) -> anyhow::Result<Measured> {
    anyhow::ensure!(
        p.pubs > 0 && p.pubs <= usize::from(u16::MAX),
        "--pubs out of range"
    );
    anyhow::ensure!(p.subs > 0, "--subs must be at least 1");
    let deadline = Instant::now() + p.timeout;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let shared = Arc::new(Shared {
        received: (0..p.subs).map(|_| Padded::default()).collect(),
        claimed: AtomicU64::new(0),
        written: AtomicU64::new(0),
        window: p.window.max(1),
        waiting: AtomicUsize::new(0),
        opened: Notify::new(),
        origin: Instant::now(),
    });
    let template = publish_frame(p.size, p.encoding)?;

    let mut connecting = JoinSet::new();
    for _ in 0..p.subs {
        connecting.spawn(tokio::time::timeout(
            SETUP_TIMEOUT,
            connect_subscriber(ep, p.encoding),
        ));
    }
    let mut sub_conns = Vec::with_capacity(p.subs);
    while let Some(conn) = connecting.join_next().await {
        sub_conns.push(conn?.context("subscribing took too long")??);
    }
    let pub_path = if ep.relay { "/pub" } else { "/" };
    let mut pub_conns = Vec::with_capacity(p.pubs);
    for _ in 0..p.pubs {
        let conn = tokio::time::timeout(SETUP_TIMEOUT, wire::connect(ep.addr, pub_path))
            .await
            .context("connecting a publisher took too long")??;
        pub_conns.push(conn);
    }

    let expected: u64 = p.msgs;
    let mut subscribers = JoinSet::new();
    for (i, conn) in sub_conns.into_iter().enumerate() {
        subscribers.spawn(subscribe_loop(
            i,
            conn,
            shared.clone(),
            p.pubs,
            expected,
            p.rate.is_some(),
            stop.clone(),
        ));
    }

    probe();
    let start = Instant::now();
    let mut publishers = JoinSet::new();
    for (i, conn) in pub_conns.into_iter().enumerate() {
        let (index, count, shared, template) =
            (i as u16, p.share(i), shared.clone(), template.clone());
        match p.rate {
            None => {
                tokio::spawn(drain(conn.reader));
                publishers.spawn(async move {
                    let sent = publish_fast(index, conn.writer, template, count, shared).await;
                    (index, sent)
                });
            }
            Some(rate) => {
                let stream = conn.writer.reunite(conn.reader.into_inner()).map_err(|e| {
                    io::Error::other(format!("cannot reunite the publisher's halves: {e}"))
                })?;
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                let stop = stop.clone();
                // Stagger publishers evenly over one interval.
                let rate = rate / p.pubs as f64;
                let offset = Duration::from_secs_f64(i as f64 / (rate * p.pubs as f64));
                publishers.spawn_blocking(move || {
                    let pacing = Pacing {
                        rate,
                        start: start + offset,
                    };
                    let sent = publish_paced(index, stream, template, count, pacing, shared, stop);
                    (index, sent)
                });
            }
        }
    }

    // Watch progress; stop a run that is past its deadline or stalled.
    let mut publish_end = start;
    let mut last = (0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ends = Vec::with_capacity(p.subs);
    let mut publishing = p.pubs;
    loop {
        tokio::select! {
            published = publishers.join_next(), if publishing > 0 => {
                let Some(published) = published else { continue };
                publishing -= 1;
                match published {
                    Ok((_, Ok((_, end)))) => publish_end = publish_end.max(end),
                    Ok((index, Err(e))) => {
                        // Subscribers still expect its whole share: what it could not send
                        // shows as lost.
                        tracing::warn!(publisher = index, error = %e, "a publisher failed");
                    }
                    Err(e) => anyhow::bail!("a publisher panicked: {e}"),
                }
            }
            end = subscribers.join_next() => {
                let Some(end) = end else { break };
                ends.push(end??);
            }
            _ = tick.tick() => {
                let received = shared.total_received();
                progress.set_position(received);
                let now = Instant::now();
                if received != last.0 {
                    last = (received, now);
                }
                let stalled = publishing == 0 && now - last.1 > STALL;
                if now > deadline || stalled {
                    stop.cancel();
                }
            }
        }
    }
    if publishing > 0 {
        // Cut short: the publishers that were still going count as publishing until now.
        publish_end = Instant::now();
    }
    progress.set_position(shared.total_received());
    let delivered_end = ends
        .iter()
        .filter_map(|e| e.done)
        .max()
        .unwrap_or_else(Instant::now);
    probe();

    let mut latency: Option<Histogram<u64>> = None;
    let mut tallies = Vec::with_capacity(ends.len());
    for end in ends {
        if let Some(h) = end.latency {
            match &mut latency {
                Some(all) => all.add(&h).context("merging histograms")?,
                None => latency = Some(h),
            }
        }
        tallies.push(end.tally);
        drop(end.conn);
    }
    Ok(Measured {
        // Subscribers are held to what was asked for: anything not sent shows as lost.
        asked: (0..p.pubs).map(|i| p.share(i)).collect(),
        published: shared.written.load(SeqCst),
        publish_s: (publish_end - start).as_secs_f64(),
        elapsed_s: (delivered_end - start).as_secs_f64(),
        tallies,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let p = Params {
            pubs: 3,
            subs: 1,
            msgs: 10,
            size: 64,
            encoding: Encoding::Json,
            window: 10,
            rate: None,
            timeout: Duration::from_secs(1),
        };
        assert_eq!((0..3).map(|i| p.share(i)).collect::<Vec<_>>(), [4, 3, 3]);
    }

    #[test]
    fn publish_frames_carry_the_marker_in_both_encodings() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let (mut frame, at) = publish_frame(64, enc).unwrap();
            let stamp = Stamp {
                publisher: 1,
                seq: 2,
                sent_ns: 3,
            };
            payload::write(&mut frame, at, stamp);
            let header = wire::parse_header(&frame).unwrap().unwrap();
            let body = &frame[header.len..];
            let Ok(ClientFrame::Pub(p)) = proto::decode_client(body, enc) else {
                panic!("not a pub frame");
            };
            assert_eq!(p.data.as_str().unwrap().len(), 64);
            assert_eq!(payload::read(body), Some(stamp));
        }
    }

    #[test]
    fn losses_are_counted_per_subscriber() {
        let mut full = Tally::new(1);
        let mut partial = Tally::new(1);
        for seq in 0..10 {
            let stamp = Stamp {
                publisher: 0,
                seq,
                sent_ns: 0,
            };
            full.record(stamp);
            if seq % 2 == 0 {
                partial.record(stamp);
            }
        }
        let m = Measured {
            asked: vec![10],
            published: 10,
            publish_s: 1.0,
            elapsed_s: 1.0,
            tallies: vec![full, partial],
            latency: None,
        };
        assert_eq!(m.expected(), 20);
        assert_eq!(m.delivered(), 15);
        assert_eq!(m.lost(), 5);
    }
}
