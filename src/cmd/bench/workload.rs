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
//! subscriber checks every stamp (see [`payload`]), so losses and duplicates are
//! counted, not assumed. In latency mode each publisher paces itself on a thread of its own and
//! subscribers record `now - sent` in an HdrHistogram.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use proto::Encoding;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use super::payload::{self, Stamp, Tally};
use super::{frames, wire};

/// The topic every bench message goes to.
const TOPIC: &str = "bench/t";
/// Frames a throughput publisher writes at once (fewer when the window is smaller).
const BATCH: u64 = 64;
/// How long setup steps (connect, subscribe) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A run stops when no subscriber made progress for this long after publishing ended.
const STALL: Duration = Duration::from_secs(3);
/// Across brokers: how often a probe is published while waiting for the subscribers' interest
/// to reach the publishers' broker, and for how long at most.
const PROBE_EVERY: Duration = Duration::from_millis(20);
const CROSSING_TIMEOUT: Duration = Duration::from_secs(15);

/// What to run the workload against.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// How to reach the target (its address; TLS and credentials for a broker).
    pub dial: wire::Dial,
    /// The relay (paths `/sub` and `/pub`, no protocol) rather than a breadboard broker.
    pub relay: bool,
    /// Where subscribers connect when not where publishers do (`--sub-broker`): another broker
    /// of the same cluster, so that every message crosses from one broker to the other.
    pub sub_dial: Option<wire::Dial>,
}

impl Endpoint {
    /// A breadboard broker reached at `dial`, subscribers and publishers alike.
    pub fn broker(dial: wire::Dial) -> Self {
        Self {
            dial,
            relay: false,
            sub_dial: None,
        }
    }

    /// Where subscribers connect: the `--sub-broker` if there is one, else the target itself.
    fn subscribers(&self) -> Self {
        Self {
            dial: self.sub_dial.clone().unwrap_or_else(|| self.dial.clone()),
            relay: self.relay,
            sub_dial: None,
        }
    }
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
    /// Refuses a workload the run cannot carry out: a stamp numbers publishers with a `u16`,
    /// and a run without subscribers would measure nothing.
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.pubs > 0 && self.pubs <= usize::from(u16::MAX),
            "--pubs out of range"
        );
        anyhow::ensure!(self.subs > 0, "--subs must be at least 1");
        Ok(())
    }

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
pub(super) struct Shared {
    /// Messages received so far, per subscriber.
    received: Vec<Padded>,
    /// Messages publishers have claimed the right to send so far.
    claimed: AtomicU64,
    /// Messages publishers have written so far.
    pub(super) written: AtomicU64,
    /// Most messages published and not yet received by every subscriber.
    pub(super) window: u64,
    /// Publishers waiting for the window to open.
    waiting: AtomicUsize,
    pub(super) opened: Notify,
    /// Time zero for stamps.
    origin: Instant,
}

impl Shared {
    /// Nothing sent or received yet; stamps count from now.
    pub(super) fn new(p: &Params) -> Self {
        Self {
            received: (0..p.subs).map(|_| Padded::default()).collect(),
            claimed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            window: p.window.max(1),
            waiting: AtomicUsize::new(0),
            opened: Notify::new(),
            origin: Instant::now(),
        }
    }

    pub(super) fn slowest(&self) -> u64 {
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
    pub(super) async fn claim(&self, n: u64) {
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
    pub(super) fn progress(&self, i: usize, count: u64) {
        self.received[i].0.store(count, SeqCst);
        // Waking publishers costs a lock: do it only when one waits, every 64 messages.
        if count % 64 == 0 && self.waiting.load(SeqCst) > 0 {
            self.opened.notify_waiters();
        }
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// Connects a subscriber and subscribes it to `filter`; returns once nothing published from
/// then on can be missed: after the broker's `ok`, or the relay's `ready` (the relay has no
/// topics: its subscribers get everything). `bench` and `bench conns` both subscribe this way.
///
/// # Errors
/// The connection failed or closed, or the first answer was not the one expected.
pub async fn connect_subscriber(
    ep: Endpoint,
    filter: &str,
    enc: Encoding,
) -> anyhow::Result<wire::Conn> {
    let path = if ep.relay { "/sub" } else { "/" };
    let mut conn = wire::connect(&ep.dial, path).await?;
    if !ep.relay {
        conn.writer
            .write_all(&frames::subscribe(filter, enc)?)
            .await?;
    }
    loop {
        let frame = conn
            .reader
            .next()
            .await?
            .context("closed while subscribing")?;
        if matches!(frame.opcode, wire::TEXT | wire::BINARY) {
            if !ep.relay {
                frames::subscribed(frame.payload, enc)?;
            }
            return Ok(conn);
        }
    }
}

/// What a subscriber hands back when its run is over.
pub(super) struct SubscriberEnd {
    /// Its connection (a WebSocket, or a NATS client), kept open until the figures are taken,
    /// so that no close disturbs the run's end.
    pub(super) open: Box<dyn std::any::Any + Send>,
    /// What it received.
    pub(super) tally: Tally,
    /// Its latencies, in latency mode.
    pub(super) latency: Option<Histogram<u64>>,
    /// When it received its last expected message (`None`: it never did).
    pub(super) done: Option<Instant>,
}

pub(super) fn histogram() -> Histogram<u64> {
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
        open: Box::new(conn),
        tally,
        latency,
        done,
    })
}

/// Sends `count` messages as fast as the window allows, many frames per write.
async fn publish_fast(
    index: u16,
    mut writer: wire::Writer,
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

impl Pacing {
    /// Publisher `i` of `pubs` sharing `rate` messages per second from `start`: its share of
    /// the rate, its start staggered so that the publishers spread evenly over one interval.
    fn staggered(rate: f64, pubs: usize, i: usize, start: Instant) -> Self {
        let rate = rate / pubs as f64;
        let offset = Duration::from_secs_f64(i as f64 / (rate * pubs as f64));
        Self {
            rate,
            start: start + offset,
        }
    }
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
    let end = Instant::now();
    close_paced(stream);
    Ok((seq, end))
}

/// As [`publish_paced`], as a task (for TLS): paced to the runtime timer's millisecond, which
/// is coarser than a thread's sleep. The write half is shut down at the end (a TLS
/// `close_notify`), and the drained read half takes what the broker still sends.
async fn publish_paced_async(
    index: u16,
    mut writer: wire::Writer,
    (mut frame, at): (Vec<u8>, usize),
    count: u64,
    pacing: Pacing,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> io::Result<(u64, Instant)> {
    let interval = Duration::from_secs_f64(1.0 / pacing.rate);
    let mut seq = 0;
    while seq < count && !stop.is_cancelled() {
        let due = pacing.start + interval.mul_f64(seq as f64);
        tokio::time::sleep_until(due.into()).await;
        shared.claim(1).await;
        let stamp = Stamp {
            publisher: index,
            seq,
            sent_ns: shared.now_ns(),
        };
        payload::write(&mut frame, at, stamp);
        writer.write_all(&frame).await?;
        shared.written.fetch_add(1, SeqCst);
        seq += 1;
    }
    let end = Instant::now();
    let _ = writer.shutdown().await;
    Ok((seq, end))
}

/// Ends a paced publisher's connection so that the broker reads every frame it was sent.
///
/// This thread never reads, so the broker's keepalive pings wait unread in its socket; closing a
/// socket with unread data sends a reset, and a reset makes the broker's kernel drop what it has
/// not read yet: the last messages would be lost on the way, by the client. So: no more writes
/// (the broker reads up to that end, then closes), and what it sent is drained, for a bounded
/// time, before the socket is closed.
fn close_paced(mut stream: std::net::TcpStream) {
    use std::io::Read;
    const LINGER: Duration = Duration::from_secs(2);
    if stream.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(LINGER));
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Reads and discards what the broker sends a publisher (answering pings).
async fn drain(mut reader: wire::FrameReader<wire::Reader>) {
    while let Ok(Some(frame)) = reader.next().await {
        if frame.opcode == wire::CLOSE {
            break;
        }
    }
}

/// One publisher's part of the workload, handed to the task or thread that sends it.
struct Publisher {
    /// Its index in the stamps.
    index: u16,
    /// Its frame, stamp zeroed, and where the stamp's marker is.
    frame: (Vec<u8>, usize),
    /// Its share of the messages.
    count: u64,
    shared: Arc<Shared>,
}

/// The running publishers: each ends with its index, and what it sent and when it finished.
pub(super) type Publishers = JoinSet<(u16, io::Result<(u64, Instant)>)>;

impl Publisher {
    /// Sends as fast as the window allows, as a task; what the target sends back is drained.
    fn spawn_fast(self, conn: wire::Conn, publishers: &mut Publishers) {
        tokio::spawn(drain(conn.reader));
        publishers.spawn(async move {
            let index = self.index;
            let sent = publish_fast(index, conn.writer, self.frame, self.count, self.shared).await;
            (index, sent)
        });
    }

    /// Sends at its pace, on a thread of its own over a blocking socket; over TLS, whose
    /// records need the async stream, as a task paced by the runtime's timer.
    ///
    /// # Errors
    /// The socket could not be made blocking.
    fn spawn_paced(
        self,
        conn: wire::Conn,
        pacing: Pacing,
        stop: CancellationToken,
        publishers: &mut Publishers,
    ) -> io::Result<()> {
        if let tokio_util::either::Either::Right(_) = conn.writer {
            tokio::spawn(drain(conn.reader));
            publishers.spawn(async move {
                let index = self.index;
                let sent = publish_paced_async(
                    index,
                    conn.writer,
                    self.frame,
                    self.count,
                    pacing,
                    self.shared,
                    stop,
                )
                .await;
                (index, sent)
            });
            return Ok(());
        }
        let stream = conn.into_blocking()?;
        publishers.spawn_blocking(move || {
            let index = self.index;
            let sent = publish_paced(
                index,
                stream,
                self.frame,
                self.count,
                pacing,
                self.shared,
                stop,
            );
            (index, sent)
        });
        Ok(())
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
    let run = Run::new(p)?;
    let (shared, stop) = (&run.shared, &run.stop);
    let frame = frames::publish(TOPIC, p.size, p.encoding)?;
    let mut sub_conns = connect_subscribers(&ep.subscribers(), p).await?;
    let mut pub_conns = connect_publishers(&ep, p.pubs).await?;
    if ep.sub_dial.is_some() {
        until_crossing(&mut sub_conns, &mut pub_conns, p.encoding).await?;
    }
    let subscribers = spawn_subscribers(sub_conns, shared, p, stop);

    probe();
    let start = Instant::now();
    let publishers = spawn_publishers(pub_conns, &frame, start, shared, p, stop)?;
    run.finish(p, start, (publishers, subscribers), progress, probe)
        .await
}

/// One run's shared state, its stop signal and its deadline: what drives a run whatever its
/// clients speak (breadboard's protocol here, NATS's in `super::nats`).
pub(super) struct Run {
    pub(super) shared: Arc<Shared>,
    /// Cancelled when the run must stop (deadline, stall, or the run is dropped).
    pub(super) stop: CancellationToken,
    _stop_on_exit: tokio_util::sync::DropGuard,
    /// The whole run, setup included, stops at this time.
    deadline: Instant,
}

impl Run {
    /// A run of the workload `p`, its deadline counted from now.
    ///
    /// # Errors
    /// The workload cannot be run (see [`Params::check`]).
    pub(super) fn new(p: &Params) -> anyhow::Result<Self> {
        p.check()?;
        let stop = CancellationToken::new();
        Ok(Self {
            shared: Arc::new(Shared::new(p)),
            _stop_on_exit: stop.clone().drop_guard(),
            stop,
            deadline: Instant::now() + p.timeout,
        })
    }

    /// Watches the run, whose publishers started at `start`, to its end; calls `probe` then,
    /// and takes the figures.
    ///
    /// # Errors
    /// A publisher panicked, a subscriber failed or panicked.
    pub(super) async fn finish(
        &self,
        p: &Params,
        start: Instant,
        (publishers, subscribers): (Publishers, Subscribers),
        progress: &ProgressBar,
        probe: &mut dyn FnMut(),
    ) -> anyhow::Result<Measured> {
        let watch = Watch {
            shared: &self.shared,
            progress,
            stop: &self.stop,
            deadline: self.deadline,
            start,
        };
        let ended = watch.until_done(publishers, subscribers).await?;
        probe();
        ended.measured(p, self.shared.written.load(SeqCst), start)
    }
}

/// Connects and subscribes every subscriber, all at once: they must all be subscribed before
/// the first message, or they would miss it.
async fn connect_subscribers(ep: &Endpoint, p: &Params) -> anyhow::Result<Vec<wire::Conn>> {
    let mut connecting = JoinSet::new();
    for _ in 0..p.subs {
        connecting.spawn(tokio::time::timeout(
            SETUP_TIMEOUT,
            connect_subscriber(ep.clone(), TOPIC, p.encoding),
        ));
    }
    let mut conns = Vec::with_capacity(p.subs);
    while let Some(conn) = connecting.join_next().await {
        conns.push(conn?.context("subscribing took too long")??);
    }
    Ok(conns)
}

/// Across brokers, a subscriber's `ok` says its own broker has it, not that the publishers'
/// broker knows yet: interest travels through NATS. So, as a real client would, the first
/// publisher sends probes (data without a stamp) until every subscriber has received one; only
/// then does the run start. Probes still on their way are ignored by the subscribers, never
/// counted.
///
/// # Errors
/// No probe reached some subscriber within [`CROSSING_TIMEOUT`], or a connection failed.
async fn until_crossing(
    subs: &mut [wire::Conn],
    pubs: &mut [wire::Conn],
    enc: Encoding,
) -> anyhow::Result<()> {
    let publisher = pubs.first_mut().context("no publisher to probe with")?;
    let probe = frames::probe(TOPIC, enc)?;
    let started = Instant::now();
    let received = futures_util::future::try_join_all(subs.iter_mut().map(first_probe));
    let probing = async {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            publisher.writer.write_all(&probe).await?;
        }
    };
    tokio::time::timeout(CROSSING_TIMEOUT, async {
        tokio::select! {
            got = received => got.map(drop),
            failed = probing => failed,
        }
    })
    .await
    .context("no probe crossed to the subscribers' broker in time")??;
    tracing::debug!(took = ?started.elapsed(), "interest crossed");
    Ok(())
}

/// Reads `conn` until a data frame (a probe) arrives, answering pings.
async fn first_probe(conn: &mut wire::Conn) -> io::Result<()> {
    loop {
        let frame =
            conn.reader.next().await?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed while probing")
            })?;
        match frame.opcode {
            wire::TEXT | wire::BINARY => return Ok(()),
            wire::PING => {
                let payload = frame.payload.to_vec();
                wire::pong(&mut conn.writer, &payload).await?;
            }
            wire::CLOSE => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed while probing",
                ))
            }
            _ => {}
        }
    }
}

/// Connects every publisher, before any sends, so that connecting is not timed.
async fn connect_publishers(ep: &Endpoint, pubs: usize) -> anyhow::Result<Vec<wire::Conn>> {
    let path = if ep.relay { "/pub" } else { "/" };
    let mut conns = Vec::with_capacity(pubs);
    for _ in 0..pubs {
        let conn = tokio::time::timeout(SETUP_TIMEOUT, wire::connect(&ep.dial, path))
            .await
            .context("connecting a publisher took too long")??;
        conns.push(conn);
    }
    Ok(conns)
}

/// The running subscribers.
pub(super) type Subscribers = JoinSet<io::Result<SubscriberEnd>>;

/// Starts a task per subscriber, each expecting every message published.
fn spawn_subscribers(
    conns: Vec<wire::Conn>,
    shared: &Arc<Shared>,
    p: &Params,
    stop: &CancellationToken,
) -> Subscribers {
    let mut subscribers = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        subscribers.spawn(subscribe_loop(
            i,
            conn,
            shared.clone(),
            p.pubs,
            p.msgs,
            p.rate.is_some(),
            stop.clone(),
        ));
    }
    subscribers
}

/// Starts every publisher with its share of the messages, from `start`: as fast as the window
/// allows, or (latency mode) paced and staggered evenly over one interval.
///
/// # Errors
/// A paced publisher's socket could not be made blocking.
fn spawn_publishers(
    conns: Vec<wire::Conn>,
    frame: &(Vec<u8>, usize),
    start: Instant,
    shared: &Arc<Shared>,
    p: &Params,
    stop: &CancellationToken,
) -> io::Result<Publishers> {
    let mut publishers = JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let publisher = Publisher {
            index: i as u16,
            frame: frame.clone(),
            count: p.share(i),
            shared: shared.clone(),
        };
        match p.rate {
            None => publisher.spawn_fast(conn, &mut publishers),
            Some(rate) => {
                let pacing = Pacing::staggered(rate, p.pubs, i, start);
                publisher.spawn_paced(conn, pacing, stop.clone(), &mut publishers)?;
            }
        }
    }
    Ok(publishers)
}

/// Watches a run while it goes: shows its progress, and stops it when it is past its deadline
/// or stalled (nothing received for [`STALL`] once publishing is over), so that a run with
/// losses ends and reports them instead of waiting for messages that will never come.
struct Watch<'a> {
    shared: &'a Shared,
    progress: &'a ProgressBar,
    stop: &'a CancellationToken,
    deadline: Instant,
    /// When the first publisher started.
    start: Instant,
}

/// How a run ended, as the watcher saw it.
struct Ended {
    /// When the last publisher finished (or the run was cut short).
    publish_end: Instant,
    /// When the last subscriber received its last expected message.
    delivered_end: Instant,
    /// Every subscriber's end.
    ends: Vec<SubscriberEnd>,
}

impl Watch<'_> {
    /// Waits for every subscriber to end, stopping the run if it must.
    ///
    /// # Errors
    /// A publisher panicked, or a subscriber failed or panicked.
    async fn until_done(
        &self,
        mut publishers: Publishers,
        mut subscribers: Subscribers,
    ) -> anyhow::Result<Ended> {
        let mut publish_end = self.start;
        let mut last = (0u64, Instant::now());
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut ends = Vec::with_capacity(subscribers.len());
        let mut publishing = publishers.len();
        loop {
            tokio::select! {
                published = publishers.join_next(), if publishing > 0 => {
                    let Some(published) = published else { continue };
                    publishing -= 1;
                    if let Some(end) = publisher_end(published)? {
                        publish_end = publish_end.max(end);
                    }
                }
                end = subscribers.join_next() => {
                    let Some(end) = end else { break };
                    ends.push(end??);
                }
                _ = tick.tick() => self.on_tick(&mut last, publishing),
            }
        }
        if publishing > 0 {
            // Cut short: the publishers that were still going count as publishing until now.
            publish_end = Instant::now();
        }
        self.progress.set_position(self.shared.total_received());
        let delivered_end = ends
            .iter()
            .filter_map(|e| e.done)
            .max()
            .unwrap_or_else(Instant::now);
        Ok(Ended {
            publish_end,
            delivered_end,
            ends,
        })
    }

    /// Shows progress; stops the run past its deadline, or when `last`, the count received
    /// and when it last changed, shows a stall once no publisher is left.
    fn on_tick(&self, last: &mut (u64, Instant), publishing: usize) {
        let received = self.shared.total_received();
        self.progress.set_position(received);
        let now = Instant::now();
        if received != last.0 {
            *last = (received, now);
        }
        let stalled = publishing == 0 && now - last.1 > STALL;
        if now > self.deadline || stalled {
            self.stop.cancel();
        }
    }
}

/// When a publisher that ended finished; `None` if it failed. A failure is logged, not fatal:
/// subscribers still expect its whole share, so what it could not send shows as lost.
///
/// # Errors
/// The publisher panicked.
fn publisher_end(
    joined: Result<(u16, io::Result<(u64, Instant)>), JoinError>,
) -> anyhow::Result<Option<Instant>> {
    match joined {
        Ok((_, Ok((_, end)))) => Ok(Some(end)),
        Ok((index, Err(e))) => {
            tracing::warn!(publisher = index, error = %e, "a publisher failed");
            Ok(None)
        }
        Err(e) => anyhow::bail!("a publisher panicked: {e}"),
    }
}

impl Ended {
    /// The run's figures, timed from `start`, with `published` messages written.
    ///
    /// # Errors
    /// Subscribers' histograms could not be merged.
    fn measured(self, p: &Params, published: u64, start: Instant) -> anyhow::Result<Measured> {
        let (tallies, latency) = merge(self.ends)?;
        Ok(Measured {
            // Subscribers are held to what was asked for: anything not sent shows as lost.
            asked: (0..p.pubs).map(|i| p.share(i)).collect(),
            published,
            publish_s: (self.publish_end - start).as_secs_f64(),
            elapsed_s: (self.delivered_end - start).as_secs_f64(),
            tallies,
            latency,
        })
    }
}

/// Every subscriber's tally, and their latencies in one histogram; closes their connections.
///
/// # Errors
/// The histograms could not be merged.
fn merge(ends: Vec<SubscriberEnd>) -> anyhow::Result<(Vec<Tally>, Option<Histogram<u64>>)> {
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
        drop(end.open);
    }
    Ok((tallies, latency))
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
