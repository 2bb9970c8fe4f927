//! `breadboard sub`, `pub` and `req` from the shell, against the real broker.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{bin, Broker, Proc, WAIT};

/// Runs `breadboard <args>` to completion against `broker`, with `stdin` as its input.
fn run(broker: &Broker, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("BREADBOARD_BROKER", broker.url())
        .env("BREADBOARD_NO_MDNS", "1")
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start breadboard");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("breadboard {} did not finish in {WAIT:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A subscriber process, ready once it printed the retained `ready` marker.
fn subscriber(broker: &Broker, args: &[&str]) -> Proc {
    let mut all = vec!["sub", "--broker"];
    let url = broker.url();
    all.push(&url);
    all.extend_from_slice(args);
    all.push("ready");
    Proc::start(&all)
}

#[test]
fn pub_and_sub_from_the_shell() {
    let broker = Broker::start(&[]);
    // A retained marker tells when the subscriber is in place.
    assert!(run(&broker, &["pub", "ready", "1", "--retain"], "")
        .status
        .success());
    let sub = subscriber(&broker, &["--json", "-n", "6", "pin/#"]);
    sub.expect_line("\"topic\":\"ready\"");

    let one = run(
        &broker,
        &["pub", "pin/a/state", "1", "--name", "tester"],
        "",
    );
    assert!(one.status.success(), "{one:?}");
    let text = run(&broker, &["pub", "pin/a/label", "hello world"], "");
    assert!(text.status.success());
    let lines = run(
        &broker,
        &["pub", "pin/b/state"],
        "2\n\n{\"x\":[1,2]}\n\"3\"\n",
    );
    assert!(lines.status.success(), "{lines:?}");
    // A topic one may not publish to is refused, with the broker's reason.
    let bad = run(&broker, &["pub", "pin/+/state", "1"], "");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("wildcard"),
        "{bad:?}"
    );

    let mut got: Vec<Value> = Vec::new();
    for _ in 0..5 {
        let line = sub.line(WAIT).expect("a message line");
        got.push(serde_json::from_str(&line).expect("one JSON object per line"));
    }
    let data: Vec<&Value> = got.iter().map(|m| &m["data"]).collect();
    assert_eq!(
        data,
        [
            &json!(1),
            &json!("hello world"),
            &json!(2),
            &json!({"x": [1, 2]}),
            &json!("3")
        ]
    );
    assert_eq!(got[0]["from"], "tester");
    assert_eq!(got[0]["topic"], "pin/a/state");
}

#[test]
fn sub_prints_readable_lines_and_stops_after_n() {
    let broker = Broker::start(&[]);
    run(
        &broker,
        &["pub", "pin/a/state", "1", "--retain", "--name", "p"],
        "",
    );
    let out = run(&broker, &["sub", "pin/+/state", "-n", "1"], "");
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let line = text.lines().next().expect("one line");
    // time, topic, data, sender, flags
    assert!(
        line.contains(" pin/a/state 1  (from p)  [retained]"),
        "{line}"
    );
}

#[test]
fn sub_fails_when_too_few_messages_come_in_time() {
    let broker = Broker::start(&[]);
    let out = run(
        &broker,
        &["sub", "quiet/#", "-n", "1", "--timeout", "0.3"],
        "",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 of 1"),
        "{out:?}"
    );
    // Without -n, a timeout is just the end.
    let out = run(&broker, &["sub", "quiet/#", "--timeout", "0.3"], "");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn req_prints_the_first_reply_or_fails_clearly() {
    let broker = Broker::start(&[]);
    let pin = Proc::start(&[
        "node",
        "pin",
        "--name",
        "pin-7",
        "--broker",
        &broker.url(),
        "--no-mdns",
        "--sequence",
        "4",
    ]);
    pin.expect_line("online at");
    let out = run(&broker, &["req", "clock/tick", "0", "--json"], "");
    assert!(out.status.success(), "{out:?}");
    let reply: Value = serde_json::from_str(stdout(&out).trim()).expect("a JSON reply");
    assert_eq!(reply["from"], "pin-7");
    assert_eq!(reply["data"].as_array().map(Vec::len), Some(4));

    let out = run(
        &broker,
        &["req", "nobody/home", "1", "--timeout", "0.3"],
        "",
    );
    assert!(!out.status.success(), "a request nobody answers must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no reply on nobody/home"), "{err}");
}
