//! The crash-safe store: every retained value and the last presence of every name, kept in one
//! [redb](https://docs.rs/redb) file, `<data dir>/store.redb`, so that a broker restarted (or
//! crashed) comes back with them.
//!
//! # What is kept
//! - Retained values: topic → (value, `from`, `updated_ms`). A clear deletes the row.
//! - Presence: name → its `$SYS/nodes/<name>` object. A removal deletes the row.
//!
//! Messages that are not retained never reach the store.
//!
//! # Group commit
//! The methods that change the store are called from the broker's async code, under the router's
//! locks, so they never touch the disk and never wait for it: each adds its operation to a
//! pending set under a short mutex and returns. The pending set is keyed by topic and by name
//! (the latest operation on a key wins), so its memory is bounded by the number of distinct keys
//! (plus one ack per acknowledged write in flight, which the sessions bound); the acks of
//! superseded operations are kept and called all the same.
//!
//! A writer thread (`store-writer`) waits at most `commit_delay` (a few ms) after the first
//! operation of a batch, writes the whole batch in one redb write transaction with
//! [`Durability::Immediate`](redb::Durability::Immediate) (redb's commit flips a checksummed
//! commit slot and fsyncs), and then calls the acks. Operations arriving during a commit form
//! the next batch, so under load a batch is as large as the disk is slow, and a stream of
//! retained updates pays one fsync per batch, not one per update. Hence:
//! - a retained `pub` with an `id` is answered once its [`Ack`] is called with `Ok`: it is on disk;
//! - one without an `id` is on disk within the same delay (plus one commit);
//! - [`Store::flush`] waits for everything accepted so far (at shutdown); dropping the last
//!   handle flushes too and joins the writer.
//!
//! A failed commit calls its acks with [`StoreError::Commit`] and logs; its operations go back
//! in the pending set (under any newer ones) and are written with the next batch, after the
//! database is reopened (redb wants that after an I/O error). Nothing here panics: poisoned
//! mutexes are taken over, and a panic inside redb (it asserts on some damaged files) or in an
//! ack is caught and reported.
//!
//! # Format
//! Three redb tables (the file is created in redb's v3 file format, the one later redb versions
//! read):
//! - `meta`: `&str → u64`; `"format"` → [`FORMAT`]. A file of another version is refused with
//!   [`StoreError::UnknownVersion`]; a redb file without the key, with
//!   [`StoreError::Incompatible`].
//! - `retained`: topic `&str` → `(updated_ms: u64, from: Option<&str>, value: &[u8])`;
//! - `presence`: name `&str` → `&[u8]`.
//!
//! Values are stored as JSON text: the JSON form is the protocol's public contract, it holds any
//! [`serde_json::Value`] exactly (integers of 64 bits, floats that round-trip), and the file
//! stays readable with any redb tool.
//!
//! # Opening
//! [`Store::open`] blocks (it reads everything back); call it at start, before serving. A file
//! locked by another broker, unreadable, corrupt or of another format is an error naming the
//! file, and the file is left as it was. A file left by a crash is repaired by redb on open (it
//! goes back to the last commit, which holds every acknowledged write).

mod disk;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

pub use disk::FORMAT;

/// The file inside the data directory.
pub const FILE_NAME: &str = "store.redb";

/// The commit delay a broker uses unless told otherwise: long enough to gather a burst of
/// retained updates into one commit, short against a network round trip.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);

/// Called once a write is durable (`Ok`) or has failed. It runs on the store's writer thread, so
/// it must be quick (hand the answer over, e.g. push a frame to an outbox); it is called on the
/// caller's own thread, before the `put` returns, by an in-memory store and by a store that has
/// stopped, so it must not take a lock the caller of the `put` may hold.
pub type Ack = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// A retained value read back at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Retained {
    /// Its topic.
    pub topic: String,
    /// The value.
    pub data: Value,
    /// The name of the client that published it, if it had one.
    pub from: Option<String>,
    /// When it was published, in ms since the Unix epoch.
    pub updated_ms: u64,
}

/// The last presence of a name, read back at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Presence {
    /// The client's name.
    pub name: String,
    /// Its `$SYS/nodes/<name>` object.
    pub value: Value,
}

/// Everything the store held when it was opened, each list in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    /// The retained values, by topic.
    pub retained: Vec<Retained>,
    /// The last presence of every name, by name.
    pub presence: Vec<Presence>,
}

/// Counters of the writer, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Operations accepted (puts, clears, removals).
    pub accepted: u64,
    /// Commits that wrote something.
    pub commits: u64,
    /// Rows written or deleted by those commits (after coalescing: at most one per key and
    /// commit).
    pub written: u64,
    /// Commits that failed (their operations were kept for the next one).
    pub failed_commits: u64,
}

/// Why the store cannot be opened, or a write did not reach the disk. Every message names the
/// file (or directory) concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (another broker?) has the file open.
    #[error("{}: locked: another process has it open (another broker on this data directory?)", .path.display())]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The file is damaged or is not a redb file; it was left as it was.
    #[error("{}: corrupt store file (it was left as it is; move it away to start afresh): {source}", .path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What redb found (boxed: redb's error is large).
        source: Box<redb::Error>,
    },
    /// The directory or the file could not be created, read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The data directory or the store file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file was written by a broker with another store format.
    #[error("{}: store format {found}, but this broker reads format {FORMAT} only", .path.display())]
    UnknownVersion {
        /// The store file.
        path: PathBuf,
        /// The format the file says it has.
        found: u64,
    },
    /// The file is a redb database, but not one this broker can read.
    #[error("{}: not a breadboard store this broker can read: {reason}", .path.display())]
    Incompatible {
        /// The store file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A commit failed; the write is not durable yet (it is retried with the next commit).
    #[error("{}: write failed: {source}", .path.display())]
    Commit {
        /// The store file.
        path: PathBuf,
        /// Why (shared by every write of that commit).
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A value could not be encoded (a [`Value`] always can: this is not expected).
    #[error("{}: cannot encode the value: {source}", .path.display())]
    Encode {
        /// The store file.
        path: PathBuf,
        /// What serde_json said.
        source: serde_json::Error,
    },
    /// The store's writer has stopped; nothing more is written.
    #[error("{}: the store is closed", .path.display())]
    Closed {
        /// The store file.
        path: PathBuf,
    },
}

/// A handle on the store: cheap to clone, shared by every part of the broker that writes to it.
/// Dropping the last handle flushes and joins the writer thread, which blocks for up to one
/// commit: drop it where blocking is fine (after the runtime's tasks, or in `spawn_blocking`).
#[derive(Clone)]
pub struct Store {
    /// `None` for [`Store::in_memory`].
    disk: Option<Arc<Handle>>,
}

/// What the handles of one open store share; dropping it closes the store.
struct Handle {
    shared: Arc<writer::Shared>,
    path: PathBuf,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(thread) = self.writer.take() {
            // An ack that held the last handle drops it on the writer thread, which cannot wait
            // for itself: it sees `closing` and stops on its own.
            if thread.thread().id() != std::thread::current().id() && thread.join().is_err() {
                tracing::error!(path = %self.path.display(), "store: the writer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.path() {
            Some(path) => f.debug_tuple("Store").field(&path).finish(),
            None => f.write_str("Store(in memory)"),
        }
    }
}

impl Store {
    /// Opens `<dir>/store.redb`, creating the directory and the file if need be, and reads
    /// everything back. Blocks on the disk: call it at start. `commit_delay` is how long the
    /// writer lets writes gather after the first of a batch ([`DEFAULT_COMMIT_DELAY`]).
    ///
    /// # Errors
    /// [`StoreError::Locked`] if another process has the file open, [`StoreError::Corrupt`] if
    /// it is damaged or not a redb file, [`StoreError::UnknownVersion`] or
    /// [`StoreError::Incompatible`] if it is not a store of this format, [`StoreError::Io`] if
    /// the directory or the file cannot be created or read. The file is then left as it was.
    pub fn open(dir: &Path, commit_delay: Duration) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let (db, loaded) = disk::open(&path)?;
        let (shared, thread) = writer::spawn(db, &path, commit_delay)?;
        let handle = Handle {
            shared,
            path,
            writer: Some(thread),
        };
        Ok((
            Store {
                disk: Some(Arc::new(handle)),
            },
            loaded,
        ))
    }

    /// A store that keeps nothing (no `--data-dir`): every call is accepted and acked at once.
    pub fn in_memory() -> Store {
        Store { disk: None }
    }

    /// Sets the retained value of `topic`. Never blocks on the disk; `ack` is called once the
    /// value is durable.
    pub fn put_retained(
        &self,
        topic: &str,
        data: &Value,
        from: Option<&str>,
        updated_ms: u64,
        ack: Option<Ack>,
    ) {
        let Some(handle) = &self.disk else {
            return ack_now(ack);
        };
        // Encoded here, outside the mutex: the pending set then holds one buffer per topic.
        let data = match serde_json::to_vec(data) {
            Ok(data) => data,
            Err(e) => {
                // A `Value` always serializes; should that ever change, the write is refused
                // rather than stored wrong.
                tracing::error!(topic, error = %e, "store: cannot encode a retained value");
                return fail_now(
                    ack,
                    StoreError::Encode {
                        path: handle.path.clone(),
                        source: e,
                    },
                );
            }
        };
        self.put_retained_json(topic, data, from, updated_ms, ack);
    }

    /// [`Store::put_retained`] for a value the caller has already written as JSON (`json`,
    /// kept as is), so that it is not written twice.
    pub fn put_retained_json(
        &self,
        topic: &str,
        json: Vec<u8>,
        from: Option<&str>,
        updated_ms: u64,
        ack: Option<Ack>,
    ) {
        let Some(handle) = &self.disk else {
            return ack_now(ack);
        };
        let record = disk::Record {
            data: json,
            from: from.map(Box::from),
            updated_ms,
        };
        handle
            .shared
            .submit(writer::Op::Retained(topic, Some(record)), ack);
    }

    /// Clears the retained value of `topic`. Never blocks on the disk; `ack` is called once the
    /// clear is durable.
    pub fn clear_retained(&self, topic: &str, ack: Option<Ack>) {
        let Some(handle) = &self.disk else {
            return ack_now(ack);
        };
        handle.shared.submit(writer::Op::Retained(topic, None), ack);
    }

    /// Sets the last presence of `name` (its `$SYS/nodes/<name>` object). Never blocks on the
    /// disk; durable within the commit delay.
    pub fn put_presence(&self, name: &str, value: &Value) {
        let Some(handle) = &self.disk else { return };
        match serde_json::to_vec(value) {
            Ok(json) => handle
                .shared
                .submit(writer::Op::Presence(name, Some(json)), None),
            Err(e) => tracing::error!(name, error = %e, "store: cannot encode a presence"),
        }
    }

    /// Forgets the presence of `name`. Never blocks on the disk.
    pub fn remove_presence(&self, name: &str) {
        if let Some(handle) = &self.disk {
            handle.shared.submit(writer::Op::Presence(name, None), None);
        }
    }

    /// Waits until everything accepted so far is durable (at shutdown; it blocks: call it from
    /// a thread that may, e.g. `spawn_blocking`). Calling it again is harmless.
    ///
    /// # Errors
    /// [`StoreError::Commit`] if the commit that was to hold those writes failed,
    /// [`StoreError::Closed`] if the writer has stopped.
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.disk {
            Some(handle) => handle.shared.flush(),
            None => Ok(()),
        }
    }

    /// The store file; `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.disk.as_deref().map(|h| h.path.as_path())
    }

    /// The writer's counters (all zero for an in-memory store).
    pub fn stats(&self) -> StoreStats {
        self.disk
            .as_deref()
            .map(|h| h.shared.stats())
            .unwrap_or_default()
    }
}

/// The ack of an in-memory store: at once.
fn ack_now(ack: Option<Ack>) {
    if let Some(ack) = ack {
        ack(Ok(()));
    }
}

/// An ack refused before the write reached the pending set.
fn fail_now(ack: Option<Ack>, e: StoreError) {
    if let Some(ack) = ack {
        ack(Err(e));
    }
}
