//! The dashboard in a real browser: a broker, the circuit's nodes (real `breadboard node`
//! processes), and headless Chromium driven over the Chrome DevTools Protocol.
//!
//! ```text
//!   breadboard node clock ─┐
//!   breadboard node pin   ─┼─► broker (127.0.0.1:0) ◄── GET / ── chromium --headless
//!   breadboard node buzzer─┘                        ◄── ws:// ──  (the page)
//!                                                                    ▲ CDP over WebSocket
//!                                                        this test ──┘ (Runtime.evaluate, screenshots)
//! ```
//!
//! With an auth file the page asks for a token first and shows only what its user may read; a
//! page of another origin (served by a small Python web server) may not open a socket at all.
//!
//! Chromium runs with a fresh profile in a temporary directory, reachable only on loopback; it is
//! killed (its process group, by id) and the profile removed when the test ends, pass or fail.
//! Without Chromium the test is skipped with a message, except under `CI=true`, where it fails.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::auth::{upgrade, user, AuthFile};
use crate::common::{Broker, Client, Proc, Ws, WAIT};

/// How long the page may take to show a state we wait for.
const PAGE_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_live_circuit_in_chromium() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let started = Instant::now();
    let broker = Broker::start(&["--stats-interval", "1"]);
    let url = broker.url();
    let _nodes = start_circuit(&url);

    let browser = Chromium::launch(&exe);
    let mut page = browser.open(&format!("{}/", broker.http())).await;

    // The nodes appear online and the pin's LED changes while we watch.
    let mut levels = std::collections::BTreeSet::new();
    let seen = page
        .wait_for("nodes online, ticks, a changing pin", |s| {
            for pin in s["pins"].as_array().into_iter().flatten() {
                if let Some(level) = pin["level"].as_str() {
                    levels.insert(level.to_string());
                }
            }
            s["conn"] == "open"
                && ["clock", "pin-1", "buzzer"].iter().all(|n| {
                    s["online"]
                        .as_array()
                        .is_some_and(|o| o.contains(&json!(n)))
                })
                && s["ticks"].as_u64() >= Some(2)
                && pin_changes(s, "pin-1") >= 2
                && levels.contains("0")
                && levels.contains("1")
                && s["stats"].as_u64() > Some(0)
                && s["topics"].as_u64() >= Some(2)
                && s["log"].as_u64() > Some(0)
        })
        .await;
    println!("page state: {seen}");

    // A few more ticks, so that the screenshot shows some history (the pin's trace).
    page.wait_for("ten ticks", |s| s["ticks"].as_u64() >= Some(10))
        .await;

    let png = page.screenshot().await;
    let out = output_dir().join("dashboard.png");
    fs::write(&out, &png).expect("write the screenshot");
    println!("screenshot: {}", out.display());

    // The filter box narrows the log to a topic filter.
    let filtered = page
        .eval(
            "(() => { const f = document.querySelector('#filter'); f.value = 'pin/+/state';
               f.dispatchEvent(new Event('input'));
               const rows = [...document.querySelectorAll('#log li')];
               return JSON.stringify({ rows: rows.length,
                 other: rows.filter(r => !/^pin\\/[^/]+\\/state$/.test(r.dataset.topic)).length }); })()",
        )
        .await;
    let filtered: Value = serde_json::from_str(filtered.as_str().unwrap_or("{}")).expect("JSON");
    assert!(
        filtered["rows"].as_u64() > Some(0),
        "no pin rows: {filtered}"
    );
    assert_eq!(
        filtered["other"], 0,
        "filter let others through: {filtered}"
    );

    // PROTOCOL.md's browser snippet, run as written (its URL pointed at this broker), sees the
    // pin's retained state and the buzzer.
    let snippet = crate::clients::protocol_block("js");
    assert!(snippet.contains("ws://localhost:8765/"), "{snippet}");
    let snippet = snippet.replace("ws://localhost:8765/", &format!("{url}/"));
    page.eval(&format!(
        "window.__snippet = []; console.log = (...a) => window.__snippet.push(a.join(' ').trim());
         {{ {snippet}\n window.__snippetWs = ws; }} 'started'"
    ))
    .await;
    let mut lines = Vec::new();
    let deadline = Instant::now() + PAGE_WAIT;
    while !(lines
        .iter()
        .any(|l: &String| l.starts_with("pin/pin-1/state") && l.ends_with("(retained)"))
        && lines.iter().any(|l| l.starts_with("buzzer/buzzer/buzz")))
    {
        assert!(
            Instant::now() < deadline,
            "the snippet logged only {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = page.eval("JSON.stringify(window.__snippet)").await;
        lines = serde_json::from_str(got.as_str().unwrap_or("[]")).unwrap_or_default();
    }
    page.eval("window.__snippetWs.close(); 'closed'").await;
    println!(
        "PROTOCOL.md's browser snippet logged:\n{}",
        lines.join("\n")
    );

    // The broker restarts on the same port: the page notices, reconnects by itself, and shows
    // the nodes (which reconnect by themselves too) and new ticks.
    let port = broker.addr.port();
    drop(broker);
    let gone = page
        .wait_for("the page to notice the broker is gone", |s| {
            s["conn"] != "open"
        })
        .await;
    let _broker = Broker::start_on(port, &["--stats-interval", "1"]);
    let after = page
        .wait_for("reconnected, nodes back online, ticking again", |s| {
            s["conn"] == "open"
                && ["clock", "pin-1", "buzzer"].iter().all(|n| {
                    s["online"]
                        .as_array()
                        .is_some_and(|o| o.contains(&json!(n)))
                })
                && s["ticks"].as_u64() > gone["ticks"].as_u64()
        })
        .await;
    println!("after the broker restart: {after}");
    page.close().await;
    println!("dashboard test took {:.1?}", started.elapsed());
}

/// What the page shows of the cluster, read from its stable ids and data attributes.
const CLUSTER_STATE: &str = r#"JSON.stringify({
  conn: document.querySelector('#conn')?.dataset.state,
  panel: document.querySelector('#cluster-panel')?.hidden === false,
  brokers: [...document.querySelectorAll('#brokers li')].map(li => ({ name: li.dataset.broker, online: li.dataset.online, names: li.dataset.names, nodes: +li.dataset.nodes })),
  nodes: [...document.querySelectorAll('#nodes li')].map(li => ({ name: li.dataset.node, online: li.dataset.online, broker: li.dataset.broker })),
})"#;

/// Polls [`CLUSTER_STATE`] until `done` holds; panics after [`PAGE_WAIT`] with the last state.
async fn wait_for_cluster(page: &mut Page, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let text = page.eval(CLUSTER_STATE).await;
        let s: Value = serde_json::from_str(text.as_str().unwrap_or("null")).unwrap_or(Value::Null);
        if done(&s) {
            return s;
        }
        if Instant::now() > deadline {
            let _ = page.screenshot_to("dashboard-cluster-failure.png").await;
            panic!("the page did not show {what} within {PAGE_WAIT:?}; last state: {s}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the cluster state lists broker `name` with `online` and `nodes` online nodes.
fn shows_broker(s: &Value, name: &str, online: bool, nodes: u64) -> bool {
    s["brokers"].as_array().into_iter().flatten().any(|b| {
        b["name"] == name
            && b["online"] == if online { "true" } else { "false" }
            && b["names"] == "cluster"
            && b["nodes"].as_u64() == Some(nodes)
    })
}

/// Whether the nodes list shows `name` online on `broker`.
fn shows_node_on(s: &Value, name: &str, broker: &str) -> bool {
    s["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["name"] == name && n["online"] == "true" && n["broker"] == broker)
}

/// Two brokers joined by a loopback `nats-server` (see `cluster_view`): broker a's page lists
/// both in a Cluster panel with a node each and says which broker each node is on; broker b
/// killed turns offline there. A broker with no cluster shows no such panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_clusters_brokers() {
    let test = "dashboard_shows_the_clusters_brokers";
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let Some(nats) = crate::common::loopback_nats::LoopbackNats::start(test) else {
        return;
    };
    let a = nats.broker("a");
    let mut b = nats.broker("b");
    let solo = Broker::start(&["--name", "solo"]);
    crate::cluster_view::until_names_are_cluster_wide(&a.url());
    let _pins = [
        crate::cluster_view::pin("pin-1", &a.url()),
        crate::cluster_view::pin("pin-2", &b.url()),
        crate::cluster_view::pin("pin-3", &solo.url()),
    ];

    let browser = Chromium::launch(&exe);
    let mut page = browser.open(&format!("{}/", a.http())).await;
    let seen = wait_for_cluster(&mut page, "both brokers, a node on each", |s| {
        s["conn"] == "open"
            && s["panel"] == true
            && shows_broker(s, "a", true, 1)
            && shows_broker(s, "b", true, 1)
            && shows_node_on(s, "pin-1", "a")
            && shows_node_on(s, "pin-2", "b")
    })
    .await;
    println!("cluster on the page: {seen}");
    page.screenshot_to("dashboard-cluster.png").await;

    // Broker b dies (SIGKILL, by its PID): a buries it after 4 s of silence.
    b.proc.child.kill().expect("SIGKILL broker b");
    assert!(
        b.proc.wait_exit(Duration::from_secs(5)).is_some(),
        "broker b survived SIGKILL"
    );
    let after = wait_for_cluster(&mut page, "b offline", |s| {
        shows_broker(s, "b", false, 0) && shows_broker(s, "a", true, 1)
    })
    .await;
    println!("after b's SIGKILL: {after}");
    page.close().await;

    // Without a cluster there is no Cluster panel (once the page is live and has its node).
    let mut page = browser.open(&format!("{}/", solo.http())).await;
    wait_for_cluster(&mut page, "pin-3 and no Cluster panel", |s| {
        s["conn"] == "open"
            && s["panel"] == false
            && s["brokers"].as_array().is_some_and(Vec::is_empty)
            && s["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|n| n["name"] == "pin-3" && n["online"] == "true")
    })
    .await;
    page.close().await;
}

const VIEWER: &str = "viewer-s3cret";
const ADMIN: &str = "admin-s3cret";

/// With an auth file: the page asks for a token (again after a wrong one), keeps it for the tab,
/// shows who it is, and shows only what that user may read; a refused filter is a note, not a
/// broken page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_asks_for_a_token_and_shows_only_what_the_user_may_see() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let text = user(
        "viewer",
        VIEWER,
        r#"subscribe = { allow = ["pin/+/state", "$SYS/nodes/#", "alerts/#"], deny = ["alerts/private/#"] }"#,
    ) + &user(
        "admin",
        ADMIN,
        "names = [\"*\"]\npublish = [\"#\"]\nsubscribe = [\"#\", \"$SYS/#\"]",
    );
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg()]);
    // The admin plays a pin: its presence and its level, and things the viewer may not see.
    let mut admin = Client::json(&broker.url()).await;
    let got = admin
        .call(json!({"op": "hello", "name": "pin-1", "kind": "pin", "token": ADMIN, "id": 1}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": 1}), "the admin's hello");
    let publish = |topic: &str, data: Value, id: u64| json!({"op": "pub", "topic": topic, "data": data, "retain": true, "id": id});
    for (n, (topic, data)) in [
        ("pin/pin-1/state", json!(1)),
        ("secret/plans", json!("hidden")),
        ("clock/tick", json!(7)),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 10 + n as u64;
        let got = admin.call(publish(topic, data, id)).await;
        assert_eq!(got, json!({"op": "ok", "id": id}), "{topic}");
    }

    let browser = Chromium::launch(&exe);
    let page_url = format!("{}/", broker.http());
    let mut page = browser.open(&page_url).await;
    let asked = page
        .wait_for("the token form", |s| {
            s["login"] == true && s["conn"] == "login"
        })
        .await;
    assert_eq!(asked["messages"], 0, "data before a token: {asked}");
    assert_eq!(asked["user"], "anonymous", "{asked}");
    let _ = page.screenshot_to("dashboard-token-form.png").await;

    // A wrong token: asked again, saying so.
    page.eval(&submit_token("not-the-token")).await;
    page.wait_for("the form again after a wrong token", |s| {
        s["login"] == true
            && s["login_error"]
                .as_str()
                .is_some_and(|e| e.contains("not accepted"))
    })
    .await;

    page.eval(&submit_token(VIEWER)).await;
    let shown = page
        .wait_for(
            "connected as viewer, the pin shown, alerts/# refused",
            |s| {
                s["conn"] == "open"
                    && s["login"] == false
                    && s["user"] == "viewer"
                    && s["online"]
                        .as_array()
                        .is_some_and(|o| o.contains(&json!("pin-1")))
                    && s["topic_names"]
                        .as_array()
                        .is_some_and(|t| t.contains(&json!("pin/pin-1/state")))
                    && s["denied"] == "alerts/#"
            },
        )
        .await;
    println!("as viewer: {shown}");

    // Live: a change of level shows; what the viewer may not read never does.
    for (n, (topic, data)) in [
        ("secret/plans", json!("still hidden")),
        ("pin/pin-1/state", json!(0)),
    ]
    .into_iter()
    .enumerate()
    {
        let id = 20 + n as u64;
        let got = admin.call(publish(topic, data, id)).await;
        assert_eq!(got, json!({"op": "ok", "id": id}), "{topic}");
    }
    let live = page
        .wait_for("the pin's new level", |s| {
            s["pins"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "pin-1" && p["level"] == "0")
        })
        .await;
    for hidden in ["secret/plans", "clock/tick"] {
        for key in ["topic_names", "log_topics"] {
            assert!(
                !live[key]
                    .as_array()
                    .is_some_and(|t| t.contains(&json!(hidden))),
                "{hidden} shown to the viewer: {live}"
            );
        }
    }
    let _ = page.screenshot_to("dashboard-auth.png").await;

    // /metrics is fetched with the token: the viewer may not read $SYS/broker/stats, so 403,
    // said on the page (a plain link would have shown the broker's 401 instead).
    page.eval("document.querySelector('#metrics-link').click(); 'clicked'")
        .await;
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let note = page
            .eval("document.querySelector('#notice').textContent")
            .await;
        if note
            .as_str()
            .is_some_and(|n| n.contains("not permitted to read /metrics"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no /metrics note; the page says {note}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Kept for the tab's session only, and enough to come back without asking.
    let kept = page
        .eval("JSON.stringify([sessionStorage.getItem('breadboard.token'), localStorage.length, document.cookie])")
        .await;
    assert_eq!(
        kept.as_str(),
        Some(json!([VIEWER, 0, ""]).to_string().as_str()),
        "where the token is kept"
    );
    page.call("Page.reload", json!({})).await;
    page.wait_for("reconnected after a reload, without the form", |s| {
        s["conn"] == "open" && s["login"] == false && s["user"] == "viewer"
    })
    .await;

    // The rules reloaded: a filter taken away is noted, the page stays connected; the user
    // taken away is cut off (1008), and the page asks for a token again.
    let admin_only = user(
        "admin",
        ADMIN,
        "names = [\"*\"]\npublish = [\"#\"]\nsubscribe = [\"#\", \"$SYS/#\"]",
    );
    file.write(
        &(user(
            "viewer",
            VIEWER,
            r#"subscribe = { allow = ["pin/+/state", "alerts/#"], deny = ["alerts/private/#"] }"#,
        ) + &admin_only),
    );
    broker.reload();
    page.wait_for("$SYS/nodes/# noted as dropped, still connected", |s| {
        s["conn"] == "open"
            && s["denied"]
                .as_str()
                .is_some_and(|d| d.split(' ').any(|f| f == "$SYS/nodes/#"))
    })
    .await;
    file.write(&admin_only);
    broker.reload();
    page.wait_for("the form again once the viewer is removed", |s| {
        s["login"] == true
            && s["login_error"]
                .as_str()
                .is_some_and(|e| e.contains("not accepted"))
    })
    .await;
    page.close().await;
}

/// Served over TLS (`--tls-self-signed`), the page speaks wss:// to its own https:// origin, and
/// the token form works the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_over_https_with_a_token() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let text = user(
        "viewer",
        VIEWER,
        r#"subscribe = ["pin/+/state", "$SYS/nodes/#"]"#,
    ) + &user("admin", ADMIN, "names = [\"*\"]\npublish = [\"#\"]");
    let file = AuthFile::new(&text);
    let broker = Broker::start(&["--auth", file.arg(), "--tls-self-signed"]);
    assert!(broker.http().starts_with("https://"), "{}", broker.http());
    // This throwaway browser trusts any certificate: the fingerprint is checked by tests/tls.rs.
    let browser = Chromium::launch_with(&exe, &["--ignore-certificate-errors"]);
    let mut page = browser.open(&format!("{}/", broker.http())).await;
    page.wait_for("the token form over https", |s| s["login"] == true)
        .await;
    page.eval(&submit_token(VIEWER)).await;
    let shown = page
        .wait_for("connected over wss:// as viewer", |s| {
            s["conn"] == "open" && s["user"] == "viewer" && s["denied"] == ""
        })
        .await;
    println!("over https: {shown}");
    let scheme = page.eval("location.protocol").await;
    assert_eq!(scheme, "https:", "the page's own scheme");
    page.close().await;
}

/// The submit of the token form, as a person typing and pressing enter.
fn submit_token(token: &str) -> String {
    format!(
        "(() => {{ const t = document.querySelector('#token'); t.value = {};
           document.querySelector('#login').requestSubmit(); return 'sent'; }})()",
        json!(token)
    )
}

/// A page of another origin (a small Python web server on another port) opening a WebSocket to
/// the broker: refused with 403, its socket never opens, unless `--allow-origin` names it; the
/// broker's own page still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_origin_cannot_open_a_socket() {
    let Some(exe) = chromium_or_skip() else {
        return;
    };
    let site = tempfile::tempdir().expect("a directory for the other site");
    fs::write(
        site.path().join("probe.html"),
        r#"<!doctype html><title>another site</title><script>
const url = new URLSearchParams(location.search).get('ws');
window.probe = { state: 'connecting', events: [] };
const ws = new WebSocket(url);
ws.onopen = () => { window.probe.state = 'open'; window.probe.events.push('open'); };
ws.onerror = () => { window.probe.events.push('error'); };
ws.onclose = (e) => {
  window.probe.events.push('close ' + e.code);
  if (window.probe.state !== 'open') window.probe.state = 'refused';
};
</script>"#,
    )
    .expect("write the probe page");
    let mut server = Command::new("python3");
    server
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(site.path());
    let server = Proc::spawn(server);
    let line = server.expect_line("Serving HTTP on");
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let origin = format!("http://127.0.0.1:{port}");

    let broker = Broker::start(&[]);
    let allowing = Broker::start(&["--allow-origin", &origin]);
    let browser = Chromium::launch(&exe);

    let refused = probe(&browser, &origin, &broker).await;
    assert_eq!(refused["state"], "refused", "{refused}");
    assert!(
        !refused["events"]
            .as_array()
            .is_some_and(|e| e.contains(&json!("open"))),
        "{refused}"
    );
    // The refusal is the Origin check's: the same upgrade from that Origin is a 403.
    let got = upgrade(broker.addr, "/", &[("Origin", &origin)]).await;
    assert_eq!(got.status, 403, "{}", got.head);

    let allowed = probe(&browser, &origin, &allowing).await;
    assert_eq!(
        allowed["state"], "open",
        "with --allow-origin {origin}: {allowed}"
    );

    let mut own = browser.open(&format!("{}/", broker.http())).await;
    own.wait_for("the broker's own page connected", |s| s["conn"] == "open")
        .await;
    own.close().await;
}

/// Opens the other site's probe page against `broker` and waits for its socket to settle.
async fn probe(browser: &Chromium, origin: &str, broker: &Broker) -> Value {
    let mut page = browser
        .open(&format!("{origin}/probe.html?ws={}/", broker.url()))
        .await;
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let got = page
            .eval("JSON.stringify(window.probe || { state: 'loading' })")
            .await;
        let got: Value =
            serde_json::from_str(got.as_str().unwrap_or("null")).unwrap_or(Value::Null);
        if got["state"] == "open" || got["state"] == "refused" {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "the probe page's socket did not settle: {got}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Changes of level the page counted for one pin.
fn pin_changes(s: &Value, name: &str) -> u64 {
    s["pins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["changes"].as_u64())
        .unwrap_or(0)
}

/// The demo circuit as separate processes: a fast clock ticking forever, one pin, one buzzer.
fn start_circuit(url: &str) -> Vec<Proc> {
    let node = |args: &[&str]| {
        let mut all = vec!["node"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--broker", url, "--no-mdns"]);
        Proc::start(&all)
    };
    vec![
        node(&["pin", "--name", "pin-1", "--seed", "7"]),
        node(&["buzzer", "--name", "buzzer"]),
        node(&["clock", "--name", "clock", "--tacks", "0", "--delay", "0.3"]),
    ]
}

/// What the page shows, read from its stable ids and data attributes.
const PAGE_STATE: &str = r#"JSON.stringify({
  conn: document.querySelector('#conn')?.dataset.state,
  online: [...document.querySelectorAll('#nodes li[data-online="true"]')].map(li => li.dataset.node),
  offline: [...document.querySelectorAll('#nodes li[data-online="false"]')].map(li => li.dataset.node),
  ticks: [...document.querySelectorAll('#circuit .part.clock')].reduce((a, c) => a + (+c.dataset.ticks || 0), 0),
  pins: [...document.querySelectorAll('#circuit .part.pin')].map(p => ({ name: p.dataset.node, level: p.dataset.level, changes: +p.dataset.changes })),
  buzzes: [...document.querySelectorAll('#circuit .part.buzzer')].reduce((a, b) => a + (+b.dataset.buzzes || 0), 0),
  topics: document.querySelectorAll('#topics tbody tr').length,
  log: document.querySelectorAll('#log li').length,
  stats: document.querySelectorAll('#stats [data-stat]').length,
  messages: +(document.body?.dataset.messages ?? 0),
  login: document.querySelector('#login')?.hidden === false,
  login_error: document.querySelector('#login-error')?.textContent ?? '',
  auth: document.querySelector('#who')?.dataset.auth,
  user: document.querySelector('#who')?.dataset.user,
  denied: document.querySelector('#denied')?.dataset.filters ?? '',
  topic_names: [...document.querySelectorAll('#topics tbody tr')].map(tr => tr.dataset.topic),
  log_topics: [...new Set([...document.querySelectorAll('#log li')].map(li => li.dataset.topic))],
})"#;

/// Where tests leave files for people to look at: `target/test-output/`.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("test-output");
    fs::create_dir_all(&dir).expect("create target/test-output");
    dir
}

/// Chromium's path, or `None` (after saying so) when it is missing outside CI.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let msg = "chromium not found (Debian: apt-get install chromium; scripts/test does it)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIPPED dashboard test: {msg}");
    }
    found
}

/// A headless Chromium with a throwaway profile; killed and cleaned up on drop.
struct Chromium {
    child: Child,
    profile: PathBuf,
    devtools: String,
}

impl Chromium {
    fn launch(exe: &Path) -> Chromium {
        Self::launch_with(exe, &[])
    }

    /// Launches with `extra` command-line switches.
    fn launch_with(exe: &Path, extra: &[&str]) -> Chromium {
        let profile = std::env::temp_dir().join(format!(
            "breadboard-chromium-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        fs::create_dir_all(&profile).expect("create the profile directory");
        let log = fs::File::create(profile.join("chromium.log")).expect("create the log");
        let child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-breakpad",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            // Its own process group, so that its helpers (renderer, zygote) go with it.
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let mut browser = Chromium {
            child,
            profile,
            devtools: String::new(),
        };
        // Chromium writes the port it picked, then the browser endpoint's path.
        let file = browser.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if let Ok(text) = fs::read_to_string(&file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    browser.devtools = format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                    break;
                }
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited ({status}): {}", browser.log());
            }
            assert!(
                Instant::now() < deadline,
                "no DevToolsActivePort after {PAGE_WAIT:?}: {}",
                browser.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        browser
    }

    fn log(&self) -> String {
        let text = fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Opens a tab on `url` (a page on the broker) and returns a handle to drive it.
    async fn open(&self, url: &str) -> Page {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&self.devtools))
            .await
            .expect("DevTools connect in time")
            .expect("DevTools connect");
        let mut page = Page {
            ws,
            next_id: 0,
            session: None,
        };
        let target = page
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().map(String::from);
        assert!(page.session.is_some(), "no session: {attached}");
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        let nav = page.call("Page.navigate", json!({ "url": url })).await;
        assert!(nav.get("errorText").is_none(), "navigation failed: {nav}");
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        // The whole group first (the helpers), then the browser itself: both by our own ids.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..20 {
            if fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One tab, driven over the DevTools Protocol (a flattened session on the browser socket).
struct Page {
    ws: Ws,
    next_id: u64,
    session: Option<String>,
}

impl Page {
    /// Sends a command and returns its result; panics on an error or after [`WAIT`].
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut frame = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            frame["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send a DevTools command");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {WAIT:?}"))
                .unwrap_or_else(|| panic!("DevTools closed during {method}"))
                .expect("DevTools socket");
            let Message::Text(text) = msg else { continue };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] != id {
                continue; // an event, or another session's traffic
            }
            if let Some(err) = answer.get("error") {
                panic!("{method} failed: {err}");
            }
            return answer["result"].clone();
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(exc) = result.get("exceptionDetails") {
            panic!("page script failed: {exc}");
        }
        result["result"]["value"].clone()
    }

    /// The page's visible state (see [`PAGE_STATE`]).
    async fn state(&mut self) -> Value {
        let text = self.eval(PAGE_STATE).await;
        serde_json::from_str(text.as_str().unwrap_or("null")).unwrap_or(Value::Null)
    }

    /// Polls the page every 200 ms until `done` holds; panics after [`PAGE_WAIT`] with the last
    /// state seen.
    async fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let s = self.state().await;
            if done(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.screenshot_to("dashboard-failure.png").await;
                panic!("the page did not show {what} within {PAGE_WAIT:?}; last state: {s}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the viewport.
    async fn screenshot(&mut self) -> Vec<u8> {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": false }),
            )
            .await;
        base64_decode(shot["data"].as_str().expect("screenshot data"))
    }

    async fn screenshot_to(&mut self, name: &str) -> PathBuf {
        let png = self.screenshot().await;
        let out = output_dir().join(name);
        let _ = fs::write(&out, png);
        eprintln!("screenshot: {}", out.display());
        out
    }

    /// Closes the browser politely (the drop of [`Chromium`] kills it anyway).
    async fn close(mut self) {
        self.session = None;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.ws.send(Message::Text(
                json!({ "id": u64::MAX, "method": "Browser.close" })
                    .to_string()
                    .into(),
            )),
        )
        .await;
    }
}

/// Standard base64 (as in CDP's screenshot `data`), without a dependency for one call.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes_padded_and_unpadded() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk"), b"hi");
    assert_eq!(base64_decode("iVBORw0KGgo="), b"\x89PNG\r\n\x1a\n");
}
