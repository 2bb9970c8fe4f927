//! The store file: its tables and format key, opening it (with every failure named), reading it
//! all back, and writing one batch in one transaction.
//!
//! Everything here blocks on the disk; only `Store::open` (at start) and the writer thread call it.

use std::any::Any;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;

use super::writer::CommitError;
use super::{Loaded, Presence, Retained, StoreError};

/// `"format"` → [`FORMAT`]: which layout the other tables have.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Topic → (`updated_ms`, `from`, the value as JSON text).
const RETAINED: TableDefinition<&str, (u64, Option<&str>, &[u8])> =
    TableDefinition::new("retained");
/// Name → its `$SYS/nodes/<name>` object as JSON text.
const PRESENCE: TableDefinition<&str, &[u8]> = TableDefinition::new("presence");

/// The key of the format version in [`META`].
const FORMAT_KEY: &str = "format";
/// The format this code writes and the only one it reads. Bump it with any change to the
/// tables above (and teach `open` the old one, or refuse it, as now).
pub const FORMAT: u64 = 1;

/// Memory redb may use to cache pages. Its default (1 GiB) is far more than a broker on a small
/// board should give it; a whole store of 100 000 small values fits in a few MiB.
const CACHE_BYTES: usize = 32 << 20;

/// A retained value on its way to disk: the value already encoded (by the caller, so the pending
/// set holds one allocation per topic rather than a tree).
#[derive(Debug, Clone)]
pub(super) struct Record {
    /// The value as JSON text.
    pub(super) data: Vec<u8>,
    /// The publisher's name, if it had one.
    pub(super) from: Option<Box<str>>,
    /// When it was published (ms since the Unix epoch), as the router reports it.
    pub(super) updated_ms: u64,
}

/// Key → the latest operation on it: `Some` to write, `None` to delete.
pub(super) type Ops<V> = HashMap<Box<str>, Option<V>, foldhash::fast::RandomState>;

/// Opens (creating if need be) the store file, checks its format and reads it all back.
pub(super) fn open(path: &Path) -> Result<(Database, Loaded), StoreError> {
    let db = open_db(path)?;
    guarded(path, || check_format(&db, path))??;
    let loaded = guarded(path, || load(&db, path))??;
    Ok((db, loaded))
}

/// Opens the redb database in `path`, creating the file if it is missing or empty. It does not
/// check the format: [`open`] does, and the writer's reopen after a failed commit need not.
pub(super) fn open_db(path: &Path) -> Result<Database, StoreError> {
    let existed = match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::other("not a regular file"),
            });
        }
        Ok(meta) => meta.len() > 0,
        Err(_) => false,
    };
    let repair_path = path.to_owned();
    let mut builder = Database::builder();
    builder
        // The v3 file format is the one redb 3 and later read, so that upgrading redb does not
        // mean upgrading the file.
        .create_with_file_format_v3(true)
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(move |session| {
            // redb runs its repair on a file it has just created, too: only an existing file was
            // left by a crash.
            if existed && session.progress() == 0.0 {
                tracing::warn!(path = %repair_path.display(), "store was not closed cleanly; repairing it");
            }
        });
    guarded(path, || builder.create(path))?.named(path)
}

/// Checks the format key; writes it (and creates the tables) in a new, empty file.
fn check_format(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_read().named(path)?;
    let found = match txn.open_table(META) {
        Ok(meta) => meta.get(FORMAT_KEY).named(path)?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(classify(path, e.into())),
    };
    match found {
        Some(FORMAT) => Ok(()),
        Some(found) => Err(StoreError::UnknownVersion {
            path: path.to_owned(),
            found,
        }),
        None if txn.list_tables().named(path)?.next().is_some() => Err(StoreError::Incompatible {
            path: path.to_owned(),
            reason: "a redb file without breadboard's format key".into(),
        }),
        None => {
            drop(txn);
            let mut txn = db.begin_write().named(path)?;
            txn.set_durability(Durability::Immediate);
            txn.open_table(META)
                .named(path)?
                .insert(FORMAT_KEY, FORMAT)
                .named(path)?;
            txn.open_table(RETAINED).named(path)?;
            txn.open_table(PRESENCE).named(path)?;
            txn.commit().named(path)
        }
    }
}

/// Reads every retained value and presence back, in key order.
fn load(db: &Database, path: &Path) -> Result<Loaded, StoreError> {
    let txn = db.begin_read().named(path)?;
    let mut loaded = Loaded::default();
    match txn.open_table(RETAINED) {
        Ok(table) => {
            let rows = table.len().named(path)?;
            loaded.retained.reserve(usize::try_from(rows).unwrap_or(0));
            for row in table.iter().named(path)? {
                let (key, value) = row.named(path)?;
                let topic = key.value();
                let (updated_ms, from, data) = value.value();
                loaded.retained.push(Retained {
                    topic: topic.to_owned(),
                    data: decode(path, topic, data)?,
                    from: from.map(str::to_owned),
                    updated_ms,
                });
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(classify(path, e.into())),
    }
    match txn.open_table(PRESENCE) {
        Ok(table) => {
            for row in table.iter().named(path)? {
                let (key, value) = row.named(path)?;
                let name = key.value();
                loaded.presence.push(Presence {
                    name: name.to_owned(),
                    value: decode(path, name, value.value())?,
                });
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(classify(path, e.into())),
    }
    Ok(loaded)
}

/// A stored JSON value; one that does not parse means the file is not what we wrote.
fn decode(path: &Path, key: &str, json: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        source: Box::new(redb::Error::Corrupted(format!(
            "the value of {key:?} is not JSON: {e}"
        ))),
    })
}

/// Writes one batch in one transaction and waits for it to be on disk (fsync).
pub(super) fn commit(
    db: &Database,
    retained: &Ops<Record>,
    presence: &Ops<Vec<u8>>,
) -> Result<(), CommitError> {
    write_batch(db, retained, presence).map_err(|e| Arc::new(e) as CommitError)
}

#[allow(
    clippy::result_large_err,
    reason = "redb's own error, returned once per commit; boxing it here buys nothing"
)]
fn write_batch(
    db: &Database,
    retained: &Ops<Record>,
    presence: &Ops<Vec<u8>>,
) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    if !retained.is_empty() {
        let mut table = txn.open_table(RETAINED)?;
        for (topic, op) in retained {
            match op {
                Some(r) => {
                    table.insert(
                        &**topic,
                        (r.updated_ms, r.from.as_deref(), r.data.as_slice()),
                    )?;
                }
                None => {
                    table.remove(&**topic)?;
                }
            }
        }
    }
    if !presence.is_empty() {
        let mut table = txn.open_table(PRESENCE)?;
        for (name, op) in presence {
            match op {
                Some(json) => {
                    table.insert(&**name, json.as_slice())?;
                }
                None => {
                    table.remove(&**name)?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Runs `f`, turning a panic inside redb (it asserts on some damaged files, e.g. one shorter than
/// its header says) into [`StoreError::Corrupt`]: a bad file must be an error, not a crash.
pub(super) fn guarded<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, StoreError> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| StoreError::Corrupt {
        path: path.to_owned(),
        source: Box::new(redb::Error::Corrupted(format!(
            "redb gave up reading it: {}",
            message(&*payload)
        ))),
    })
}

/// The text of a panic, if it has one.
pub(super) fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// Sorts a redb error into what the operator must do about it, naming `path`.
fn classify(path: &Path, e: redb::Error) -> StoreError {
    let path = path.to_owned();
    match e {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked { path },
        // redb's word for "the first bytes are not a redb header".
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt {
                path,
                source: Box::new(redb::Error::Io(io)),
            }
        }
        redb::Error::Io(source) => StoreError::Io { path, source },
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => StoreError::Incompatible {
            path,
            reason: e.to_string(),
        },
        source => StoreError::Corrupt {
            path,
            source: Box::new(source),
        },
    }
}

/// A redb result turned into a [`StoreError`] naming the file.
trait Named<T> {
    fn named(self, path: &Path) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> Named<T> for Result<T, E> {
    fn named(self, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| classify(path, e.into()))
    }
}
