//! The pending set and the writer thread that commits it: group commit.
//!
//! Callers add an operation to [`Pending`] under a short mutex and return; the writer takes the
//! whole set once `commit_delay` has passed since its oldest operation (or at once when asked to
//! flush or close), writes it in one transaction, and then calls the acks of everything in it.
//!
//! ```text
//!  put_retained ─┐                      ┌─ commit_delay after the first op ─┐
//!  put_presence ─┼─► Pending (by key) ──┤                                   ├─► one redb write
//!  clear, remove ┘   + acks             └─ flush() / last handle dropped ───┘   txn, fsync, acks
//! ```

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::Database;

use super::disk::{self, Ops, Record};
use super::{Ack, StoreError, StoreStats};

/// Why a commit failed, shared by the acks of every operation in it.
pub(super) type CommitError = Arc<dyn std::error::Error + Send + Sync>;

/// What the handles and the writer thread share.
pub(super) struct Shared {
    /// The store file, for error messages and logs.
    path: PathBuf,
    /// How long the writer lets operations gather after the first one of a batch.
    commit_delay: Duration,
    /// Everything below; held only for map updates and counter reads, never across disk work.
    state: Mutex<State>,
    /// Wakes the writer: a first operation, a flush asked, or the last handle gone.
    work: Condvar,
    /// Wakes `flush` callers: a commit attempt has finished, or the writer stopped.
    attempted: Condvar,
}

/// Operations accepted but not yet committed: coalesced by key, so that their memory is bounded
/// by the number of distinct topics and names; every ack is kept.
#[derive(Default)]
struct Pending {
    /// Topic → its latest retained value (`None`: cleared).
    retained: Ops<Record>,
    /// Name → its latest presence as JSON text (`None`: removed).
    presence: Ops<Vec<u8>>,
    /// The acks of the operations in this set, called after the commit that holds them.
    acks: Vec<Ack>,
}

impl Pending {
    /// Puts back the operations of a failed commit, under any newer ones for the same key.
    fn requeue(&mut self, retained: Ops<Record>, presence: Ops<Vec<u8>>) {
        for (k, op) in retained {
            self.retained.entry(k).or_insert(op);
        }
        for (k, op) in presence {
            self.presence.entry(k).or_insert(op);
        }
    }
}

/// The writer's state, behind [`Shared::state`].
struct State {
    pending: Pending,
    /// When the oldest operation that asks for a commit was accepted; `None` when nothing does
    /// (the operations of a failed commit wait for the next operation, a flush or the close
    /// rather than retry in a loop).
    since: Option<Instant>,
    /// Operations accepted so far (a sequence number: the n-th operation is `n`).
    accepted: u64,
    /// Every operation up to this number is on disk.
    durable: u64,
    /// Commit attempts the writer has begun, and finished.
    started: u64,
    finished: u64,
    /// The error of the last finished attempt, if it failed.
    last_error: Option<CommitError>,
    /// A `flush` caller waits: commit now, without the delay.
    flush_asked: bool,
    /// The last handle is gone: commit what is pending, then stop.
    closing: bool,
    /// The writer thread has stopped; operations are refused.
    stopped: bool,
    stats: StoreStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            path: self.path.clone(),
        }
    }

    /// Adds one operation and its ack. Never waits for the disk: the only wait is for the
    /// mutex, which the writer holds just long enough to swap the pending set.
    pub(super) fn submit(&self, op: Op<'_>, ack: Option<Ack>) {
        let mut st = self.lock();
        if st.closing || st.stopped {
            drop(st);
            if let Some(ack) = ack {
                ack(Err(self.closed()));
            }
            return;
        }
        match op {
            Op::Retained(topic, record) => set(&mut st.pending.retained, topic, record),
            Op::Presence(name, json) => set(&mut st.pending.presence, name, json),
        }
        if let Some(ack) = ack {
            st.pending.acks.push(ack);
        }
        st.accepted += 1;
        st.stats.accepted += 1;
        if st.since.is_none() {
            st.since = Some(Instant::now());
            self.work.notify_one();
        }
    }

    /// Waits until every operation accepted before the call is on disk.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        let mut st = self.lock();
        let target = st.accepted;
        if st.durable >= target {
            return Ok(());
        }
        // The first attempt to begin from now on takes everything pending, so its outcome is
        // this flush's, unless one already running makes it durable first.
        let first = st.started + 1;
        st.flush_asked = true;
        self.work.notify_one();
        loop {
            if st.durable >= target {
                return Ok(());
            }
            if st.finished >= first {
                if let Some(e) = &st.last_error {
                    return Err(StoreError::Commit {
                        path: self.path.clone(),
                        source: e.clone(),
                    });
                }
            }
            if st.stopped {
                return Err(self.closed());
            }
            st = self
                .attempted
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(super) fn stats(&self) -> StoreStats {
        self.lock().stats
    }

    /// The last handle is gone: the writer commits what is pending and stops.
    pub(super) fn close(&self) {
        self.lock().closing = true;
        self.work.notify_one();
    }
}

/// One change to the store: set (`Some`) or delete (`None`) the row of a key.
pub(super) enum Op<'a> {
    /// A topic's retained value.
    Retained(&'a str, Option<Record>),
    /// A name's presence, as JSON text.
    Presence(&'a str, Option<Vec<u8>>),
}

/// The latest operation on a key wins; the key is copied only the first time it is seen.
fn set<V>(ops: &mut Ops<V>, key: &str, op: Option<V>) {
    match ops.get_mut(key) {
        Some(slot) => *slot = op,
        None => {
            ops.insert(key.into(), op);
        }
    }
}

/// Starts the writer thread over an open database.
pub(super) fn spawn(
    db: Database,
    path: &Path,
    commit_delay: Duration,
) -> Result<(Arc<Shared>, JoinHandle<()>), StoreError> {
    let shared = Arc::new(Shared {
        path: path.to_owned(),
        commit_delay,
        state: Mutex::new(State {
            pending: Pending::default(),
            since: None,
            accepted: 0,
            durable: 0,
            started: 0,
            finished: 0,
            last_error: None,
            flush_asked: false,
            closing: false,
            stopped: false,
            stats: StoreStats::default(),
        }),
        work: Condvar::new(),
        attempted: Condvar::new(),
    });
    let writer = Writer {
        shared: shared.clone(),
        db: Some(db),
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run())
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok((shared, thread))
}

/// The writer thread's own state.
struct Writer {
    shared: Arc<Shared>,
    /// `None` after a failed commit: redb wants a database that saw an I/O error reopened, so
    /// the next attempt opens it again.
    db: Option<Database>,
}

impl Writer {
    fn run(mut self) {
        let shared = self.shared.clone();
        // However the loop ends, even by a panic, nobody is left waiting.
        let _stop = StopGuard(&shared);
        loop {
            let (batch, upto, closing) = self.next_batch();
            let Batch {
                retained,
                presence,
                acks,
            } = batch;
            let result = if retained.is_empty() && presence.is_empty() {
                Ok(())
            } else {
                self.write(&retained, &presence)
            };
            let mut st = shared.lock();
            st.finished += 1;
            match &result {
                Ok(()) => {
                    st.durable = st.durable.max(upto);
                    st.last_error = None;
                    if !(retained.is_empty() && presence.is_empty()) {
                        st.stats.commits += 1;
                        st.stats.written += (retained.len() + presence.len()) as u64;
                    }
                }
                Err(e) => {
                    st.last_error = Some(e.clone());
                    st.stats.failed_commits += 1;
                    st.pending.requeue(retained, presence);
                }
            }
            drop(st);
            shared.attempted.notify_all();
            for ack in acks {
                let outcome = match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Commit {
                        path: shared.path.clone(),
                        source: e.clone(),
                    }),
                };
                call(ack, outcome);
            }
            if closing {
                if let Err(e) = result {
                    tracing::error!(path = %shared.path.display(), error = %e,
                        "store: the last commit before closing failed; those writes are lost");
                }
                return;
            }
        }
    }

    /// Waits for a batch to be due and takes it: the pending set, the number of the last
    /// operation in it, and whether the store is closing (this is then the last batch).
    fn next_batch(&mut self) -> (Batch, u64, bool) {
        let shared = &*self.shared;
        let mut st = shared.lock();
        while st.since.is_none() && !st.flush_asked && !st.closing {
            st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(since) = st.since {
            // A delay too long to add up waits for a flush or the close.
            let due = since.checked_add(shared.commit_delay);
            while !st.flush_asked && !st.closing {
                let now = Instant::now();
                st = match due {
                    Some(due) if now >= due => break,
                    Some(due) => {
                        shared
                            .work
                            .wait_timeout(st, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => shared.work.wait(st).unwrap_or_else(PoisonError::into_inner),
                };
            }
        }
        let pending = std::mem::take(&mut st.pending);
        st.since = None;
        st.flush_asked = false;
        st.started += 1;
        let batch = Batch {
            retained: pending.retained,
            presence: pending.presence,
            acks: pending.acks,
        };
        (batch, st.accepted, st.closing)
    }

    /// One commit, reopening the database first if the last one failed.
    fn write(
        &mut self,
        retained: &Ops<Record>,
        presence: &Ops<Vec<u8>>,
    ) -> Result<(), CommitError> {
        let path = &self.shared.path;
        let result = match &self.db {
            Some(db) => Ok(db),
            None => disk::open_db(path).map(|db| &*self.db.insert(db)),
        }
        .map_err(|e| Arc::new(e) as CommitError)
        .and_then(|db| {
            disk::guarded(path, || disk::commit(db, retained, presence))
                .map_err(|e| Arc::new(e) as CommitError)?
        });
        if let Err(e) = &result {
            tracing::error!(path = %path.display(), error = %e,
                "store: commit failed; its writes are retried with the next one");
            self.db = None;
        }
        result
    }
}

/// A batch taken from the pending set.
struct Batch {
    retained: Ops<Record>,
    presence: Ops<Vec<u8>>,
    acks: Vec<Ack>,
}

/// Calls an ack; one that panics is logged, not allowed to stop the writer.
fn call(ack: Ack, outcome: Result<(), StoreError>) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| ack(outcome))) {
        tracing::error!(panic = disk::message(&*payload), "store: an ack panicked");
    }
}

/// Marks the writer stopped when its thread ends, failing the acks still pending.
struct StopGuard<'a>(&'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.stopped = true;
        let acks = std::mem::take(&mut st.pending.acks);
        drop(st);
        self.0.attempted.notify_all();
        for ack in acks {
            call(ack, Err(self.0.closed()));
        }
    }
}
