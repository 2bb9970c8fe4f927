//! The store against real files in temporary directories.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// Long enough that a test sees nothing committed before it asks.
const LONG: Duration = Duration::MAX;
/// The most a test waits for something that should happen.
const WAIT: Duration = Duration::from_secs(10);

fn open(dir: &Path) -> (Store, Loaded) {
    Store::open(dir, DEFAULT_COMMIT_DELAY).unwrap()
}

/// An ack that sends its outcome on a channel.
fn ack_to(tx: &mpsc::Sender<Result<(), StoreError>>) -> Option<Ack> {
    let tx = tx.clone();
    Some(Box::new(move |r| {
        let _ = tx.send(r);
    }))
}

/// The error of opening `dir`, which must fail.
fn open_err(dir: &Path) -> StoreError {
    match Store::open(dir, DEFAULT_COMMIT_DELAY) {
        Ok(_) => panic!("opening {} should fail", dir.display()),
        Err(e) => e,
    }
}

fn topics(loaded: &Loaded) -> Vec<(&str, &Value)> {
    loaded
        .retained
        .iter()
        .map(|r| (r.topic.as_str(), &r.data))
        .collect()
}

#[test]
fn a_new_directory_opens_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b");
    let (store, loaded) = open(&dir);
    assert_eq!(loaded, Loaded::default());
    assert_eq!(store.path(), Some(dir.join(FILE_NAME).as_path()));
    drop(store);
    let (_, loaded) = open(&dir);
    assert_eq!(loaded, Loaded::default());
}

#[test]
fn put_clear_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.put_retained("a/1", &json!(1), Some("clock"), 10, None);
    store.put_retained("a/2", &json!({"x": [1, 2]}), None, 20, None);
    store.put_retained("a/3", &json!("three"), None, 30, None);
    store.flush().unwrap();
    store.clear_retained("a/2", None);
    store.put_retained("a/3", &json!("drei"), Some("de"), 31, None);
    drop(store);

    let (store, loaded) = open(tmp.path());
    assert_eq!(
        loaded.retained,
        vec![
            Retained {
                topic: "a/1".into(),
                data: json!(1),
                from: Some("clock".into()),
                updated_ms: 10
            },
            Retained {
                topic: "a/3".into(),
                data: json!("drei"),
                from: Some("de".into()),
                updated_ms: 31
            },
        ]
    );
    assert!(loaded.presence.is_empty());
    store.clear_retained("a/1", None);
    store.clear_retained("never/set", None);
    drop(store);
    let (_, loaded) = open(tmp.path());
    assert_eq!(topics(&loaded), vec![("a/3", &json!("drei"))]);
}

#[test]
fn presence_put_remove_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.put_presence("clock", &json!({"online": true, "kind": "clock"}));
    store.put_presence("pin", &json!({"online": true}));
    store.put_presence("buzzer", &json!({"online": true}));
    store.flush().unwrap();
    store.put_presence("pin", &json!({"online": false, "since": 5}));
    store.remove_presence("buzzer");
    drop(store);

    let (_, loaded) = open(tmp.path());
    assert!(loaded.retained.is_empty());
    assert_eq!(
        loaded.presence,
        vec![
            Presence {
                name: "clock".into(),
                value: json!({"online": true, "kind": "clock"})
            },
            Presence {
                name: "pin".into(),
                value: json!({"online": false, "since": 5})
            },
        ]
    );
}

#[test]
fn values_round_trip_exactly() {
    let values = [
        json!(null),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(0.1),
        json!(1e300),
        json!(-0.0),
        json!("é ☃ \u{0} \"q\""),
        json!({"nested": {"deep": [1, "two", 3.5, false, null, {}]}}),
        json!([]),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    for (i, v) in values.iter().enumerate() {
        store.put_retained(&format!("v/{i}"), v, None, i as u64, None);
    }
    store.put_retained("$SYS/nodes/x", &json!(1), Some("é"), u64::MAX, None);
    drop(store);
    let (_, loaded) = open(tmp.path());
    let by_topic: HashMap<_, _> = loaded
        .retained
        .iter()
        .map(|r| (r.topic.as_str(), r))
        .collect();
    for (i, v) in values.iter().enumerate() {
        let r = by_topic[format!("v/{i}").as_str()];
        assert_eq!(&r.data, v);
        assert_eq!(r.data.to_string(), v.to_string(), "{v} as text");
        assert_eq!(r.updated_ms, i as u64);
        assert_eq!(r.from, None);
    }
    let sys = by_topic["$SYS/nodes/x"];
    assert_eq!((sys.from.as_deref(), sys.updated_ms), (Some("é"), u64::MAX));
}

#[test]
fn updates_of_one_topic_coalesce_and_every_ack_is_called() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), LONG).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..100 {
        store.put_retained("one", &json!(i), None, i, ack_to(&tx));
    }
    store.flush().unwrap();
    for _ in 0..100 {
        rx.recv_timeout(WAIT).unwrap().unwrap();
    }
    let stats = store.stats();
    assert_eq!((stats.accepted, stats.commits, stats.written), (100, 1, 1));
    drop(store);
    let (_, loaded) = open(tmp.path());
    assert_eq!(topics(&loaded), vec![("one", &json!(99))]);
}

#[test]
fn a_clear_after_a_put_in_one_batch_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), LONG).unwrap();
    store.put_retained("a", &json!(1), None, 1, None);
    store.clear_retained("a", None);
    store.put_retained("b", &json!(1), None, 1, None);
    store.clear_retained("b", None);
    store.put_retained("b", &json!(2), None, 2, None);
    store.put_presence("n", &json!(1));
    store.remove_presence("n");
    drop(store);
    let (_, loaded) = open(tmp.path());
    assert_eq!(topics(&loaded), vec![("b", &json!(2))]);
    assert!(loaded.presence.is_empty());
}

#[test]
fn an_ack_waits_for_the_commit() {
    let delay = Duration::from_secs(1);
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), delay).unwrap();
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    store.put_retained("a", &json!(1), None, 1, ack_to(&tx));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        rx.try_recv().is_err(),
        "acked before the commit delay was over"
    );
    assert_eq!(store.stats().commits, 0);
    rx.recv_timeout(WAIT).unwrap().unwrap();
    assert!(start.elapsed() >= delay - Duration::from_millis(20));
    // The commit is counted before the acks are called.
    assert_eq!(store.stats().commits, 1);
}

#[test]
fn flush_commits_at_once_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), LONG).unwrap();
    store.flush().unwrap();
    let (tx, rx) = mpsc::channel();
    store.put_retained("a", &json!(1), None, 1, ack_to(&tx));
    store.put_presence("n", &json!({"online": true}));
    let start = Instant::now();
    store.flush().unwrap();
    assert!(start.elapsed() < WAIT);
    rx.recv_timeout(WAIT).unwrap().unwrap();
    store.flush().unwrap();
    store.flush().unwrap();
    assert_eq!(store.stats().commits, 1);
}

#[test]
fn dropping_the_last_handle_flushes() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), LONG).unwrap();
    let clone = store.clone();
    store.put_retained("a", &json!(1), None, 1, None);
    drop(store);
    clone.put_presence("n", &json!(2));
    drop(clone);
    let (_, loaded) = open(tmp.path());
    assert_eq!(topics(&loaded), vec![("a", &json!(1))]);
    assert_eq!(loaded.presence.len(), 1);
}

#[test]
fn an_ack_may_hold_the_last_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(tmp.path(), Duration::from_millis(20)).unwrap();
    let (tx, rx) = mpsc::channel();
    let held = store.clone();
    store.put_retained(
        "a",
        &json!(1),
        None,
        1,
        Some(Box::new(move |r| {
            let _ = tx.send(r);
            // The last handle, dropped on the writer thread.
            drop(held);
        })),
    );
    drop(store);
    rx.recv_timeout(WAIT).unwrap().unwrap();
    // The writer stops on its own and lets go of the file.
    let start = Instant::now();
    let loaded = loop {
        match Store::open(tmp.path(), DEFAULT_COMMIT_DELAY) {
            Ok((_, loaded)) => break loaded,
            Err(StoreError::Locked { .. }) if start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(topics(&loaded), vec![("a", &json!(1))]);
}

#[test]
fn a_panicking_ack_does_not_stop_the_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.put_retained(
        "a",
        &json!(1),
        None,
        1,
        Some(Box::new(|_| panic!("on purpose"))),
    );
    store.flush().unwrap();
    let (tx, rx) = mpsc::channel();
    store.put_retained("b", &json!(2), None, 2, ack_to(&tx));
    rx.recv_timeout(WAIT).unwrap().unwrap();
}

#[test]
fn many_threads_all_acked_all_kept() {
    const THREADS: usize = 8;
    const EACH: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let acked = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = store.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::channel();
                for i in 0..EACH {
                    store.put_retained(
                        &format!("t{t}/{}", i % 10),
                        &json!(i),
                        None,
                        0,
                        ack_to(&tx),
                    );
                    if i % 3 == 0 {
                        store.put_presence(&format!("n{t}"), &json!(i));
                    }
                }
                for _ in 0..EACH {
                    rx.recv_timeout(WAIT).unwrap().unwrap();
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(acked.load(Ordering::Relaxed), THREADS * EACH);
    let stats = store.stats();
    assert!(stats.commits < (THREADS * EACH) as u64, "{stats:?}");
    drop(store);
    let (_, loaded) = open(tmp.path());
    assert_eq!(loaded.retained.len(), THREADS * 10);
    for r in &loaded.retained {
        let slot: usize = r.topic.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(r.data, json!(EACH - 10 + slot), "{}", r.topic);
    }
    assert_eq!(loaded.presence.len(), THREADS);
    for p in &loaded.presence {
        assert_eq!(p.value, json!((EACH - 1) - (EACH - 1) % 3), "{}", p.name);
    }
}

#[test]
fn in_memory_acks_at_once_and_keeps_nothing() {
    let store = Store::in_memory();
    let (tx, rx) = mpsc::channel();
    store.put_retained("a", &json!(1), None, 1, ack_to(&tx));
    assert!(rx.try_recv().unwrap().is_ok(), "acked before put returned");
    store.clear_retained("a", ack_to(&tx));
    assert!(rx.try_recv().unwrap().is_ok());
    store.put_presence("n", &json!(1));
    store.remove_presence("n");
    store.flush().unwrap();
    assert_eq!(store.path(), None);
    assert_eq!(store.stats(), StoreStats::default());
    assert_eq!(format!("{:?}", store.clone()), "Store(in memory)");
}

// ---- files that cannot be opened: a clear error naming the file, and the file untouched ----

/// Asserts that the message of `e` names `path`.
fn names(e: &StoreError, path: &Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{msg:?} should name {}",
        path.display()
    );
}

/// Opens `dir`, which must fail with an error that names `file` and leave `file` as it was.
fn refused(dir: &Path, file: &Path) -> StoreError {
    let before = std::fs::read(file).ok();
    let e = open_err(dir);
    names(&e, file);
    assert_eq!(
        std::fs::read(file).ok(),
        before,
        "{} was changed",
        file.display()
    );
    e
}

/// A store file holding a few values, closed.
fn valid_store(dir: &Path) -> Vec<u8> {
    let (store, _) = open(dir);
    for i in 0..200 {
        store.put_retained(
            &format!("t/{i}"),
            &json!({"i": i, "pad": "x".repeat(100)}),
            None,
            0,
            None,
        );
    }
    drop(store);
    std::fs::read(dir.join(FILE_NAME)).unwrap()
}

#[test]
fn a_file_open_elsewhere_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.put_retained("a", &json!(1), None, 1, None);
    let e = open_err(tmp.path());
    assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
    names(&e, &tmp.path().join(FILE_NAME));
    // The first store is unharmed.
    store.flush().unwrap();
    drop(store);
    let (_, loaded) = open(tmp.path());
    assert_eq!(topics(&loaded), vec![("a", &json!(1))]);
}

#[test]
fn random_bytes_are_corrupt_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(FILE_NAME);
    // Not random from run to run: a failure must be reproducible.
    let bytes: Vec<u8> = (0u32..100_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let e = refused(tmp.path(), &file);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
}

#[test]
fn a_few_bytes_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(FILE_NAME);
    std::fs::write(&file, b"{}\n").unwrap();
    let e = refused(tmp.path(), &file);
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
}

#[test]
fn a_truncated_file_is_corrupt_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = valid_store(tmp.path());
    let file = tmp.path().join(FILE_NAME);
    for len in [whole.len() / 2, 4096, 600] {
        std::fs::write(&file, &whole[..len]).unwrap();
        let e = refused(tmp.path(), &file);
        assert!(
            matches!(e, StoreError::Corrupt { .. }),
            "{len} bytes: {e:?}"
        );
    }
}

#[test]
fn an_unknown_format_version_is_refused() {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let tmp = tempfile::tempdir().unwrap();
    valid_store(tmp.path());
    let file = tmp.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 99).unwrap();
        txn.commit().unwrap();
    }
    let e = refused(tmp.path(), &file);
    assert!(
        matches!(e, StoreError::UnknownVersion { found: 99, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("format 99"), "{e}");
}

#[test]
fn another_programs_redb_file_is_refused() {
    const OTHER: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("other");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(FILE_NAME);
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(OTHER).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    let e = refused(tmp.path(), &file);
    assert!(matches!(e, StoreError::Incompatible { .. }), "{e:?}");
}

#[test]
fn a_data_dir_that_is_a_file_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    std::fs::write(&dir, b"x").unwrap();
    let e = open_err(&dir);
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    names(&e, &dir);
}

#[test]
fn a_store_file_that_is_a_directory_is_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join(FILE_NAME);
    std::fs::create_dir(&file).unwrap();
    let e = refused(tmp.path(), &file);
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
}

#[cfg(unix)]
#[test]
fn an_unreadable_store_is_an_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let whole = valid_store(tmp.path());
    let file = tmp.path().join(FILE_NAME);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&file).is_ok() {
        // Root reads it anyway: nothing to test here.
        eprintln!("skipped: permissions do not stop this user");
        return;
    }
    let e = open_err(tmp.path());
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    names(&e, &file);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), whole);
}

#[cfg(unix)]
#[test]
fn an_unwritable_data_dir_is_an_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("locked-up");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500)).unwrap();
    let writable = std::fs::write(dir.join("probe"), b"").is_ok();
    if writable {
        eprintln!("skipped: permissions do not stop this user");
        return;
    }
    let e = open_err(&dir);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    names(&e, &dir.join(FILE_NAME));
}

// ---- crash safety: a writer killed at a random moment loses nothing it had acknowledged ----

/// Set (to a data directory) in the child process that [`crash_child`] runs in.
const CHILD_ENV: &str = "BREADBOARD_STORE_CRASH_CHILD";
/// Topics the child writes in turn: value `n` goes to topic `t/{n % TOPICS}`.
const TOPICS: u64 = 50;
/// Writes the child keeps in flight.
const WINDOW: u64 = 64;

/// Not a test on its own (it returns at once): the child process of
/// [`acked_writes_survive_sigkill`]. Writes `{"n": n}` retained, keeping [`WINDOW`] writes
/// waiting for their acks, and prints `acked n` once n is acked, until it is killed.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let (store, _) = open(Path::new(&dir));
    let (tx, rx) = mpsc::channel::<u64>();
    let put = |n: u64| {
        let tx = tx.clone();
        store.put_retained(
            &format!("t/{}", n % TOPICS),
            &json!({ "n": n }),
            None,
            n,
            Some(Box::new(move |r| {
                if r.is_ok() {
                    let _ = tx.send(n);
                }
            })),
        );
    };
    let mut next = 0;
    while next < WINDOW {
        put(next);
        next += 1;
    }
    let start = Instant::now();
    // Bounded, should the parent be gone.
    while start.elapsed() < Duration::from_secs(20) {
        let Ok(n) = rx.recv_timeout(WAIT) else { break };
        println!("acked {n}");
        put(next);
        next += 1;
    }
}

#[test]
fn acked_writes_survive_sigkill() {
    let exe = std::env::current_exe().unwrap();
    // A seed that differs from run to run, without a dependency for it.
    let mut seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
    for run in 0..4 {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store::tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (line_tx, line_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut out = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                if out.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                    break acked;
                }
                // Only whole lines: the last one may have been cut by the kill. libtest may print
                // `test ... ` before the first one.
                let Some(text) = line.strip_suffix(b"\n") else {
                    break acked;
                };
                if let Some(n) = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.rsplit_once("acked "))
                    .map(|(_, n)| n)
                {
                    let n: u64 = n.parse().unwrap();
                    if acked.is_empty() {
                        let _ = line_tx.send(());
                    }
                    acked.push(n);
                }
            }
        });
        line_rx.recv_timeout(WAIT).expect("the child acked nothing");
        // 20 to 800 ms into the writes.
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 780));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(!acked.is_empty());

        let (_, loaded) = open(tmp.path());
        let mut last_acked: HashMap<u64, u64> = HashMap::new();
        for &n in &acked {
            let slot = last_acked.entry(n % TOPICS).or_insert(n);
            *slot = (*slot).max(n);
        }
        // The child never has more than WINDOW writes not printed as acked.
        let issued = acked.len() as u64 + WINDOW;
        let stored: HashMap<u64, u64> = loaded
            .retained
            .iter()
            .map(|r| {
                let topic: u64 = r.topic.strip_prefix("t/").unwrap().parse().unwrap();
                let n = r.data["n"].as_u64().unwrap();
                assert_eq!(n % TOPICS, topic, "run {run}: {r:?}");
                assert_eq!(r.updated_ms, n, "run {run}: {r:?}");
                (topic, n)
            })
            .collect();
        for (topic, &n) in &last_acked {
            let got = stored.get(topic).copied();
            assert!(
                got.is_some_and(|got| got >= n && got < issued),
                "run {run}: t/{topic} holds {got:?}, but {n} was acked ({} acks)",
                acked.len()
            );
        }
    }
}
