//! Third-party clients against the real broker: Python's `websockets` (JSON text frames) and
//! `msgpack` (binary frames), code nobody on this project wrote, speaking PROTOCOL.md.
//!
//! Each test starts a broker on 127.0.0.1:0 and runs one script from `tests/python/` with the
//! broker's URL; the script prints an `ok:` line per check and exits 0 when all held. The
//! Python example in PROTOCOL.md's "Complete sessions" is taken from the document and run too,
//! so the document stays true.
//!
//! Without `python3` and both packages the tests are skipped with a message, except under
//! `CI=true`, where they fail (`scripts/test` installs them).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Broker, Client, Proc};

/// The most any one script may take (each bounds its own waits much tighter).
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn python_pubsub_wildcards_retained_and_errors() {
    let broker = Broker::start(&[]);
    run_python_test("pubsub.py", &broker);
}

#[test]
fn python_request_reply() {
    let broker = Broker::start(&[]);
    run_python_test("request_reply.py", &broker);
}

#[test]
fn python_json_and_msgpack_clients_talk_through_the_broker() {
    let broker = Broker::start(&[]);
    run_python_test("msgpack_json.py", &broker);
}

#[test]
fn python_presence() {
    let broker = Broker::start(&[]);
    run_python_test("presence.py", &broker);
}

/// PROTOCOL.md's Python session, run as written against a broker with a real pin node, whose
/// state it reads and whose reply to its request it prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_md_python_session_runs() {
    if !python_ready() {
        return;
    }
    let script = protocol_block("python");
    let broker = Broker::start(&[]);
    let url = broker.url();
    let _pin = Proc::start(&[
        "node",
        "pin",
        "--name",
        "pin-1",
        "--broker",
        &url,
        "--no-mdns",
    ]);
    // The pin is ready once its level is retained.
    let mut watch = Client::json(&url).await;
    watch
        .send(json!({ "op": "sub", "topic": "pin/pin-1/state" }))
        .await;
    let first = watch.recv().await;
    assert_eq!(first["topic"], "pin/pin-1/state", "{first}");
    let file = std::env::temp_dir().join(format!("breadboard-protocol-{}.py", std::process::id()));
    std::fs::write(&file, script).expect("write the script");
    let args = [format!("{url}/"), "2".to_string()];
    let out = tokio::task::spawn_blocking(move || {
        let out = run_python(&file, &[&args[0], &args[1]]);
        let _ = std::fs::remove_file(&file);
        out
    })
    .await
    .expect("the script's thread");
    let out = out.expect_success("PROTOCOL.md's Python session");
    for expected in [
        "pin/pin-1/state",
        "(retained)",
        r#"{"op": "ok", "id": 3}"#,
        "_inbox/py-watch/1",
    ] {
        assert!(
            out.contains(expected),
            "{expected:?} missing from the output:\n{out}"
        );
    }
}

/// Runs `tests/python/<script> <broker url>` and fails with its output unless it exits 0.
fn run_python_test(script: &str, broker: &Broker) {
    run_python_script(script, &[&broker.url()]);
}

/// Runs `tests/python/<script> <args>` and fails with its output unless it exits 0 (skipped, or
/// failing under `CI=true`, without Python's packages); returns what it printed.
pub(crate) fn run_python_script(script: &str, args: &[&str]) -> Option<String> {
    if !python_ready() {
        return None;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let started = Instant::now();
    let out = run_python(&path, args).expect_success(script);
    println!("{script} passed in {:.1?}:\n{out}", started.elapsed());
    Some(out)
}

/// A finished (or timed-out) script: its exit status and everything it printed.
struct Finished {
    success: bool,
    status: String,
    output: String,
}

impl Finished {
    fn expect_success(self, what: &str) -> String {
        assert!(
            self.success,
            "{what} failed ({}); its output:\n{}",
            self.status, self.output
        );
        self.output
    }
}

/// Runs `python3 <script> <args>`, killing it (by PID) after [`SCRIPT_LIMIT`].
fn run_python(script: &Path, args: &[&str]) -> Finished {
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(script)
        .args(args)
        .current_dir(script.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + SCRIPT_LIMIT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    Finished {
        success: status.is_some_and(|s| s.success()),
        status: status.map_or_else(
            || format!("killed after {SCRIPT_LIMIT:?}"),
            |s| s.to_string(),
        ),
        output,
    }
}

/// Whether `python3` with `websockets` and `msgpack` is here. Missing: a skip with a message,
/// or a failure under `CI=true`.
pub(crate) fn python_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        match Command::new("python3")
            .args(["-c", "import websockets, msgpack"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
                .to_string()),
            Err(e) => Err(format!("no python3: {e}")),
        }
    });
    match ready {
        Ok(()) => true,
        Err(why) => {
            let msg = format!(
                "python3 with websockets and msgpack is needed ({why}); \
                 pip install websockets msgpack (scripts/test does it)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}");
            }
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
            false
        }
    }
}

/// The first fenced code block of `lang` in PROTOCOL.md's "Complete sessions" section.
pub(crate) fn protocol_block(lang: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md");
    let doc = std::fs::read_to_string(&path).expect("read PROTOCOL.md");
    let section = doc
        .split_once("\n## Complete sessions")
        .map(|(_, rest)| rest)
        .expect("PROTOCOL.md has a \"Complete sessions\" section");
    let fence = format!("```{lang}\n");
    let start = section
        .find(&fence)
        .unwrap_or_else(|| panic!("no {lang} block in Complete sessions"))
        + fence.len();
    let end = section[start..]
        .find("\n```")
        .expect("the code block is closed")
        + start;
    section[start..=end].to_string()
}
