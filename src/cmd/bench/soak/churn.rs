//! The soak's connection churn: a bounded number of short-lived clients a second, each of which
//! names itself, subscribes, publishes (retaining a value, then clearing it) and goes away.
//!
//! ```text
//!  hello name ─ sub <own>/# ─ sub soak/<tag>/r/+ ─ pub <own> ×3 ─ pub retained ─┐
//!  ┌──────── wait for every ok, its own 3 messages and its retained value ◄─────┘
//!  └► pub retained null ─ wait for its ok and the null ─► close | drop the socket
//! ```
//!
//! A third of the clients close gracefully (a Close frame, then the broker's), a third drop the
//! TCP socket once everything is answered, and a third drop it right after writing, without
//! reading anything (those never retain, so retained state stays bounded by what live clients
//! hold). Clients alternate JSON and MessagePack. Names come from a pool that a client reuses
//! only [`NAME_REUSE`] after its last holder started, so presence entries stay bounded too.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::Encoding;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::task::{JoinError, JoinSet};
use tokio::time::error::Elapsed;

use super::super::frames::{self, Answer};
use super::super::wire;

/// How long one client may take, from connecting to closing; one slower counts as an error.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A name is given again only this long after it was last given: far longer than a client
/// lives, so that its last holder is gone and the name free. The broker keeps the offline
/// presence of every name it has seen (about 1 KiB each), so ever-new names would grow its
/// memory without bound; from a pool, the entries are all made within the shortest default
/// warm-up (30 s), before memory is judged.
const NAME_REUSE: Duration = Duration::from_secs(30);
/// Clients alive at once, in seconds' worth of churn: past it, a second's clients are skipped
/// (and counted) instead of piling up on a broker that cannot keep up.
const IN_FLIGHT_SECONDS: u64 = 5;
/// Messages each full client publishes to its own topic.
const OWN_MESSAGES: u64 = 3;
/// The id of a full client's last frame: `hello` 1, two `sub`s, the own messages, the
/// retained value, the retained null.
const LAST_ID: u64 = 3 + OWN_MESSAGES + 2;
/// Errors logged as they happen; the rest are only counted.
const ERRORS_LOGGED: u64 = 5;

/// What to churn against.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The broker.
    pub dial: wire::Dial,
    /// Clients started per second.
    pub per_second: u32,
    /// When to stop starting clients.
    pub until: Instant,
    /// Marks this run's names and topics, so that two soaks on one broker do not meet.
    pub tag: String,
}

impl Plan {
    /// The filter matching every client's retained topic.
    pub fn retained_filter(&self) -> String {
        format!("soak/{}/r/+", self.tag)
    }

    /// How names are reused: every this many clients.
    fn name_pool(&self) -> u64 {
        (u64::from(self.per_second) * NAME_REUSE.as_secs()).max(64)
    }

    /// The script of client number `i`.
    fn script(&self, i: u64) -> Script {
        let slot = i % self.name_pool();
        Script {
            dial: self.dial.clone(),
            name: format!("soak-{}-{slot}", self.tag),
            own: format!("soak/{}/c/{slot}", self.tag),
            retained: format!("soak/{}/r/{slot}", self.tag),
            everyone: self.retained_filter(),
            encoding: if (i / 3) % 2 == 0 {
                Encoding::Json
            } else {
                Encoding::MsgPack
            },
            ending: match i % 3 {
                0 => Ending::Graceful,
                1 => Ending::Dropped,
                _ => Ending::Abandoned,
            },
        }
    }
}

/// How a client goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A Close frame, then the broker's Close.
    Graceful,
    /// The TCP socket dropped once everything is answered, without a Close frame.
    Dropped,
    /// The TCP socket dropped right after writing, nothing read.
    Abandoned,
}

/// What one client does.
#[derive(Debug, Clone)]
struct Script {
    dial: wire::Dial,
    /// Its `hello` name.
    name: String,
    /// The topic of its own messages (it subscribes to `<own>/#`).
    own: String,
    /// The topic it retains a value on, then clears.
    retained: String,
    /// The filter of every client's retained topic, whose replay it receives.
    everyone: String,
    encoding: Encoding,
    ending: Ending,
}

/// What the churn did: the clients that went through their script, how they ended, and what
/// went wrong.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Clients that connected, ran their script and went away.
    pub connections: u64,
    /// ... of which closed with a Close frame.
    pub graceful: u64,
    /// ... of which dropped the socket once answered.
    pub dropped: u64,
    /// ... of which dropped the socket without reading.
    pub abandoned: u64,
    /// Clients that failed: refused, an `err` answer, closed by the broker, or too slow.
    pub errors: u64,
    /// The first error, as said.
    pub first_error: Option<String>,
    /// A client's own messages (and its retained value and null) that it did not receive.
    pub lost: u64,
    /// ... that it received more than once.
    pub duplicates: u64,
    /// Clients not started because too many were still alive.
    pub skipped: u64,
}

impl Tally {
    /// Counts a client that ended.
    fn add(&mut self, joined: Result<Result<anyhow::Result<ClientEnd>, Elapsed>, JoinError>) {
        let failure = match joined {
            Ok(Ok(Ok(end))) => {
                self.connections += 1;
                match end.ending {
                    Ending::Graceful => self.graceful += 1,
                    Ending::Dropped => self.dropped += 1,
                    Ending::Abandoned => self.abandoned += 1,
                }
                self.lost += end.lost;
                self.duplicates += end.duplicates;
                return;
            }
            Ok(Ok(Err(e))) => format!("{e:#}"),
            Ok(Err(_)) => format!("a client took longer than {CLIENT_TIMEOUT:?}"),
            Err(e) => format!("a client panicked: {e}"),
        };
        self.errors += 1;
        if self.errors <= ERRORS_LOGGED {
            tracing::warn!(error = %failure, "a churn client failed");
        }
        self.first_error.get_or_insert(failure);
    }
}

/// Starts `plan.per_second` clients a second until `plan.until`, then waits for the last ones
/// (each bounded by [`CLIENT_TIMEOUT`]). `finished` counts clients as they end, for the
/// samples.
pub async fn run(plan: &Plan, finished: &AtomicU64) -> Tally {
    let mut tally = Tally::default();
    if plan.per_second == 0 {
        return tally;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / plan.per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let most = (u64::from(plan.per_second) * IN_FLIGHT_SECONDS).max(16) as usize;
    let end = tokio::time::sleep_until(plan.until.into());
    tokio::pin!(end);
    let mut clients = JoinSet::new();
    let mut started = 0u64;
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = tick.tick() => {
                if clients.len() < most {
                    clients.spawn(tokio::time::timeout(CLIENT_TIMEOUT, client(plan.script(started))));
                    started += 1;
                } else {
                    tally.skipped += 1;
                }
            }
            Some(joined) = clients.join_next(), if !clients.is_empty() => {
                tally.add(joined);
                finished.fetch_add(1, Relaxed);
            }
        }
    }
    while let Some(joined) = clients.join_next().await {
        tally.add(joined);
        finished.fetch_add(1, Relaxed);
    }
    tally
}

/// How a client that ran its script ended.
struct ClientEnd {
    ending: Ending,
    /// Expected messages it did not receive.
    lost: u64,
    /// Messages it received more than once.
    duplicates: u64,
}

/// What a client has heard from the broker so far.
#[derive(Debug, Default)]
struct Heard {
    /// Bit `n` set: the frame with id `n` was answered `ok`.
    acked: u64,
    /// Its own messages received live.
    own: u64,
    /// Its retained value, received live.
    values: u64,
    /// Its retained null, received live.
    clears: u64,
}

impl Heard {
    /// Takes in one data frame.
    ///
    /// # Errors
    /// The broker refused a frame.
    fn record(&mut self, answer: Answer, s: &Script) -> anyhow::Result<()> {
        match answer {
            Answer::Ok(id) if id < 64 => self.acked |= 1 << id,
            Answer::Err { id, code } => {
                anyhow::bail!("{}: the broker refused frame {id:?}: {code}", s.name)
            }
            Answer::Msg {
                topic,
                retained: false,
                null,
            } => {
                if topic == s.own {
                    self.own += 1;
                } else if topic == s.retained && null {
                    self.clears += 1;
                } else if topic == s.retained {
                    self.values += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether frames `1..=last` were all answered `ok`.
    fn acked_upto(&self, last: u64) -> bool {
        let want = ((1u64 << (last + 1)) - 1) & !1;
        self.acked & want == want
    }

    /// Expected messages not received, and messages received more than once.
    fn losses(&self) -> (u64, u64) {
        let mut lost = 0;
        let mut duplicates = 0;
        for (got, want) in [(self.own, OWN_MESSAGES), (self.values, 1), (self.clears, 1)] {
            lost += want.saturating_sub(got);
            duplicates += got.saturating_sub(want);
        }
        (lost, duplicates)
    }
}

/// Runs one client's script.
///
/// # Errors
/// It could not connect, the broker refused a frame or closed the connection.
async fn client(s: Script) -> anyhow::Result<ClientEnd> {
    let enc = s.encoding;
    let mut conn = wire::connect(&s.dial, "/")
        .await
        .context("cannot connect")?;
    let mut out = frames::hello(&s.name, "soak", 1, enc);
    out.extend(frames::subscribe_with_id(&format!("{}/#", s.own), 2, enc)?);
    out.extend(frames::subscribe_with_id(&s.everyone, 3, enc)?);
    for k in 0..OWN_MESSAGES {
        out.extend(frames::publish_value(&s.own, json!(k), false, 4 + k, enc)?);
    }
    if s.ending == Ending::Abandoned {
        conn.writer.write_all(&out).await?;
        return Ok(ClientEnd {
            ending: s.ending,
            lost: 0,
            duplicates: 0,
        });
    }
    let value = json!({ "from": s.name });
    out.extend(frames::publish_value(
        &s.retained,
        value,
        true,
        LAST_ID - 1,
        enc,
    )?);
    conn.writer.write_all(&out).await?;
    let mut heard = Heard::default();
    read_until(&mut conn, &mut heard, &s, |h| {
        h.acked_upto(LAST_ID - 1) && h.own >= OWN_MESSAGES && h.values >= 1
    })
    .await?;
    let clear = frames::publish_value(&s.retained, Value::Null, true, LAST_ID, enc)?;
    conn.writer.write_all(&clear).await?;
    read_until(&mut conn, &mut heard, &s, |h| {
        h.acked_upto(LAST_ID) && h.clears >= 1
    })
    .await?;
    if s.ending == Ending::Graceful {
        close(&mut conn, &mut heard, &s).await?;
    }
    let (lost, duplicates) = heard.losses();
    Ok(ClientEnd {
        ending: s.ending,
        lost,
        duplicates,
    })
}

/// Reads the broker's frames into `heard` until `done` says so (pings are answered).
///
/// # Errors
/// The broker refused a frame or closed the connection.
async fn read_until(
    conn: &mut wire::Conn,
    heard: &mut Heard,
    s: &Script,
    done: impl Fn(&Heard) -> bool,
) -> anyhow::Result<()> {
    while !done(heard) {
        let frame = conn
            .reader
            .next()
            .await?
            .with_context(|| format!("{}: the broker closed the connection", s.name))?;
        match frame.opcode {
            wire::TEXT | wire::BINARY => {
                heard.record(frames::answer(frame.payload, s.encoding), s)?
            }
            wire::PING => {
                let payload = frame.payload.to_vec();
                wire::pong(&mut conn.writer, &payload).await?;
            }
            wire::CLOSE => anyhow::bail!("{}: the broker closed the connection", s.name),
            _ => {}
        }
    }
    Ok(())
}

/// Closes as RFC 6455 says: a Close frame (1000, normal), the broker's Close back, then the
/// end of the stream. What arrives meanwhile still counts.
///
/// # Errors
/// The socket failed or the broker refused a frame.
async fn close(conn: &mut wire::Conn, heard: &mut Heard, s: &Script) -> anyhow::Result<()> {
    let mut frame = Vec::with_capacity(8);
    wire::put_frame(&mut frame, wire::CLOSE, &1000u16.to_be_bytes());
    conn.writer.write_all(&frame).await?;
    while let Some(frame) = conn.reader.next().await? {
        match frame.opcode {
            wire::CLOSE => break,
            wire::TEXT | wire::BINARY => {
                heard.record(frames::answer(frame.payload, s.encoding), s)?
            }
            _ => {}
        }
    }
    conn.writer.shutdown().await?;
    Ok(())
}

/// How many retained values the churn left behind on its topics: each client clears its own,
/// so anything but 0 is state that leaked (or a client that failed half-way).
///
/// # Errors
/// The broker could not be reached, or did not answer in time.
pub async fn retained_left(plan: &Plan) -> anyhow::Result<u64> {
    let count = async {
        let enc = Encoding::Json;
        let mut conn = wire::connect(&plan.dial, "/").await?;
        let filter = plan.retained_filter();
        conn.writer
            .write_all(&frames::subscribe_with_id(&filter, 1, enc)?)
            .await?;
        let mut left = 0;
        loop {
            let frame = conn
                .reader
                .next()
                .await?
                .context("the broker closed the connection")?;
            if !matches!(frame.opcode, wire::TEXT | wire::BINARY) {
                continue;
            }
            match frames::answer(frame.payload, enc) {
                Answer::Msg { retained: true, .. } => left += 1,
                Answer::Ok(1) => return anyhow::Ok(left),
                Answer::Err { code, .. } => anyhow::bail!("subscribing to {filter}: {code}"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(CLIENT_TIMEOUT, count)
        .await
        .context("counting retained values took too long")?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(per_second: u32) -> Plan {
        Plan {
            dial: wire::Dial::plain("127.0.0.1:1".parse().unwrap()),
            per_second,
            until: Instant::now(),
            tag: "t".into(),
        }
    }

    #[test]
    fn scripts_vary_ending_and_encoding_and_reuse_names_late() {
        let p = plan(20);
        let endings: Vec<_> = (0..6).map(|i| p.script(i).ending).collect();
        use Ending::*;
        assert_eq!(
            endings,
            [Graceful, Dropped, Abandoned, Graceful, Dropped, Abandoned]
        );
        assert_eq!(p.script(0).encoding, Encoding::Json);
        assert_eq!(p.script(3).encoding, Encoding::MsgPack);
        assert_eq!(p.script(7).name, "soak-t-7");
        assert_eq!(p.script(7).own, "soak/t/c/7");
        assert_eq!(p.script(7).retained, "soak/t/r/7");
        // 20 a second, a name again after 30 s: 600 names.
        assert_eq!(p.script(600).name, p.script(0).name);
        assert_ne!(p.script(599).name, p.script(0).name);
        assert_eq!(plan(1).name_pool(), 64);
    }

    #[test]
    fn acks_are_counted_by_id() {
        let mut h = Heard::default();
        for id in 1..=7 {
            assert!(!h.acked_upto(7));
            h.acked |= 1 << id;
        }
        assert!(h.acked_upto(7));
        assert!(!h.acked_upto(8));
    }

    #[test]
    fn own_messages_are_held_to_what_was_sent() {
        let s = plan(1).script(0);
        let mut h = Heard::default();
        let msg = |topic: &str, retained, null| Answer::Msg {
            topic: topic.into(),
            retained,
            null,
        };
        h.record(msg(&s.own, false, false), &s).unwrap();
        h.record(msg(&s.own, false, false), &s).unwrap();
        // Another client's retained value, replayed or live, is not ours.
        h.record(msg("soak/t/r/9", true, false), &s).unwrap();
        h.record(msg("soak/t/r/9", false, false), &s).unwrap();
        h.record(msg(&s.retained, false, false), &s).unwrap();
        h.record(msg(&s.retained, false, false), &s).unwrap();
        assert_eq!(h.losses(), (2, 1)); // one own message and the null missing; a value twice
        let refused = Answer::Err {
            id: Some(1),
            code: "name_taken".into(),
        };
        assert!(h.record(refused, &s).is_err());
    }

    #[test]
    fn failures_are_counted_and_the_first_kept() {
        let mut t = Tally::default();
        t.add(Ok(Ok(Ok(ClientEnd {
            ending: Ending::Dropped,
            lost: 1,
            duplicates: 0,
        }))));
        t.add(Ok(Ok(Err(anyhow::anyhow!("first")))));
        t.add(Ok(Ok(Err(anyhow::anyhow!("second")))));
        assert_eq!((t.connections, t.dropped, t.lost, t.errors), (1, 1, 1, 2));
        assert_eq!(t.first_error.as_deref(), Some("first"));
    }
}
