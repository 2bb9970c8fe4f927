//! TLS (issue 12), end to end: the real broker with `--tls-self-signed` (its certificate kept
//! in a temporary data directory) and with `--tls-cert/--tls-key` (a certificate this test makes
//! with `openssl req`), checked by clients nobody here wrote: Python's `ssl` module (the
//! certificate file as CA, and verification by fingerprint) and `openssl s_client`, both of which
//! must see the fingerprint the broker printed at start. A plain connection to the TLS port gets
//! the clear 400 refusal.
//!
//! Without `openssl` the tests are skipped with a message, except under `CI=true`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::auth::{http, upgrade};
use crate::common::{Broker, WAIT};

const OPENSSL: &str = "/usr/bin/openssl";

fn openssl_or_skip() -> bool {
    if Path::new(OPENSSL).exists() {
        return true;
    }
    let msg = "openssl not found (Debian: apt-get install openssl)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {msg}");
    false
}

/// Runs `openssl <args>` with `stdin`, killing it after [`WAIT`]; returns its stdout.
fn openssl(args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new(OPENSSL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start openssl");
    // Written then closed: s_client reads the end of its input as "done".
    let mut pipe = child.stdin.take().expect("piped stdin");
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl {args:?} took over {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("openssl's output");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `sha256:<lowercase hex>` out of `openssl x509 -fingerprint -sha256`'s `AB:CD:…`.
fn fingerprint_of_pem(pem: &[u8]) -> String {
    let out = openssl(&["x509", "-noout", "-fingerprint", "-sha256"], pem);
    let hex = out
        .lines()
        .find_map(|l| l.split_once("Fingerprint=").map(|(_, fp)| fp.trim()))
        .unwrap_or_else(|| panic!("no fingerprint from openssl x509: {out}"));
    format!("sha256:{}", hex.replace(':', "").to_ascii_lowercase())
}

/// The certificate `openssl s_client` is shown by the server at `addr`, as its fingerprint.
fn s_client_fingerprint(addr: std::net::SocketAddr) -> String {
    let out = openssl(
        &[
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ],
        b"",
    );
    let begin = out
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("s_client saw no certificate:\n{out}"));
    let end = out[begin..]
        .find("-----END CERTIFICATE-----")
        .expect("the end of the certificate")
        + begin
        + "-----END CERTIFICATE-----".len();
    fingerprint_of_pem(&out.as_bytes()[begin..end])
}

/// A self-signed certificate for 127.0.0.1 and localhost, made by `openssl req`: (cert, key).
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            key.to_str().expect("UTF-8 path"),
            "-out",
            cert.to_str().expect("UTF-8 path"),
        ],
        b"",
    );
    assert!(cert.exists() && key.exists(), "openssl req failed: {out}");
    (cert, key)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The start line's fingerprint, checked for its form.
fn start_fingerprint(broker: &Broker) -> String {
    assert_eq!(broker.scheme, "wss", "the start line says wss://");
    assert!(broker.url().starts_with("wss://"), "{}", broker.url());
    let fp = broker
        .fingerprint
        .clone()
        .expect("a `tls fingerprint` line at start");
    let hex = fp
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not sha256:<hex>: {fp:?}"));
    assert!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "not 64 lowercase hex digits: {fp:?}"
    );
    fp
}

/// A plain (non-TLS) request and upgrade to a TLS port: HTTP 400 saying to use TLS.
async fn plain_is_refused(broker: &Broker) {
    let got = http(broker.addr, "/healthz", &[]).await;
    assert_eq!(got.status, 400, "plain http:// to a TLS port: {}", got.head);
    assert!(
        got.body.contains("wss://") || got.body.contains("https://"),
        "the refusal says what to use: {:?}",
        got.body
    );
    let got = upgrade(broker.addr, "/", &[]).await;
    assert_eq!(got.status, 400, "plain ws:// to a TLS port: {}", got.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_kept_in_the_data_dir() {
    if !openssl_or_skip() {
        return;
    }
    let data = tempfile::tempdir().expect("a data directory");
    let other = make_cert(data.path(), "other").0;
    let args = ["--tls-self-signed", "--data-dir", path(data.path())];
    let broker = Broker::start(&args);
    let fp = start_fingerprint(&broker);

    let cert = data.path().join("tls/cert.pem");
    assert!(
        data.path().join("tls/key.pem").exists(),
        "no tls/key.pem in the data directory"
    );
    let pem = std::fs::read(&cert).expect("tls/cert.pem in the data directory");
    assert_eq!(fingerprint_of_pem(&pem), fp, "cert.pem's fingerprint");
    let seen = tokio::task::spawn_blocking({
        let addr = broker.addr;
        move || s_client_fingerprint(addr)
    })
    .await
    .expect("s_client's thread");
    assert_eq!(seen, fp, "openssl s_client saw another certificate");

    let url = broker.url();
    let (fp2, other2, cert2) = (fp.clone(), other.clone(), cert.clone());
    tokio::task::spawn_blocking(move || {
        crate::clients::run_python_script("tls.py", &[&url, path(&cert2), &fp2, path(&other2)])
    })
    .await
    .expect("the script's thread");

    plain_is_refused(&broker).await;

    // The same data directory, the same certificate (stopped gracefully, so the store closes).
    let mut broker = broker;
    broker.proc.terminate();
    assert!(
        broker.proc.wait_exit(WAIT).is_some(),
        "the broker stops on SIGTERM"
    );
    drop(broker);
    let again = Broker::start(&args);
    assert_eq!(
        start_fingerprint(&again),
        fp,
        "a new certificate after a restart"
    );
    assert_eq!(
        std::fs::read(&cert).expect("cert.pem"),
        pem,
        "cert.pem rewritten"
    );
}

#[test]
fn in_memory_makes_a_fresh_certificate_each_start() {
    let one = Broker::start(&["--tls-self-signed"]);
    let two = Broker::start(&["--tls-self-signed"]);
    assert_ne!(start_fingerprint(&one), start_fingerprint(&two));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_certificate_and_key() {
    if !openssl_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("a directory");
    let (cert, key) = make_cert(dir.path(), "broker");
    let other = make_cert(dir.path(), "other").0;
    let broker = Broker::start(&["--tls-cert", path(&cert), "--tls-key", path(&key)]);
    let fp = start_fingerprint(&broker);
    let pem = std::fs::read(&cert).expect("the certificate");
    assert_eq!(fingerprint_of_pem(&pem), fp, "the start line's fingerprint");
    let seen = tokio::task::spawn_blocking({
        let addr = broker.addr;
        move || s_client_fingerprint(addr)
    })
    .await
    .expect("s_client's thread");
    assert_eq!(seen, fp, "openssl s_client");

    let url = broker.url();
    let fp2 = fp.clone();
    tokio::task::spawn_blocking(move || {
        crate::clients::run_python_script("tls.py", &[&url, path(&cert), &fp2, path(&other)])
    })
    .await
    .expect("the script's thread");
    plain_is_refused(&broker).await;
}
