//! Helpers for brokers with credentials: auth files written from tokens hashed by the binary's
//! own `breadboard passwd`, WebSocket clients that send a token in a header, and hand-written
//! HTTP requests and upgrades (what websocat or curl put on the wire) to read the status line of
//! a refusal.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{bin, sample, Client, WAIT};

/// What `breadboard passwd` prints for `secret` on its stdin: the line
/// `tokens = ["$argon2id$..."]`. Hashing is slow on purpose, so each secret is hashed once per
/// test run.
pub fn tokens_line(secret: &str) -> String {
    static DONE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let done = DONE.get_or_init(Default::default);
    if let Some(line) = done.lock().expect("the cache").get(secret) {
        return line.clone();
    }
    let out = passwd(&[], Some(&format!("{secret}\n")));
    let line = out.trim().to_string();
    assert!(
        line.starts_with("tokens = [\"$argon2id$")
            && line.ends_with("\"]")
            && line.lines().count() == 1,
        "breadboard passwd printed {out:?}"
    );
    done.lock()
        .expect("the cache")
        .insert(secret.to_string(), line.clone());
    line
}

/// Runs `breadboard passwd <args>` with `stdin` (or none); returns its stdout, failing unless it
/// exits 0 within [`WAIT`].
pub fn passwd(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(bin())
        .arg("passwd")
        .args(args)
        .env("BREADBOARD_NO_MDNS", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start breadboard passwd");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).expect("write the secret");
    }
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("breadboard passwd {args:?} took over {WAIT:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("passwd's output");
    assert!(
        out.status.success(),
        "breadboard passwd {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 from passwd")
}

/// An auth file in a directory of its own, removed when dropped.
pub struct AuthFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl AuthFile {
    /// Writes `text` (TOML) to a fresh file.
    pub fn new(text: &str) -> AuthFile {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("auth.toml");
        let file = AuthFile { _dir: dir, path };
        file.write(text);
        file
    }

    /// Replaces the file's contents (then [`super::Broker::reload`] to apply them). Written to a
    /// side file and renamed, so the broker never reads half a file.
    pub fn write(&self, text: &str) {
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, text).expect("write the auth file");
        std::fs::rename(&tmp, &self.path).expect("rename the auth file");
    }

    /// The path, as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("a UTF-8 path")
    }
}

/// A `[users.NAME]` section with one token and the given extra TOML lines (permissions, names).
pub fn user(name: &str, secret: &str, rest: &str) -> String {
    format!("[users.{name}]\n{}\n{rest}\n\n", tokens_line(secret))
}

/// Connects a JSON client that sends `Authorization: Bearer <token>` on the upgrade request;
/// the handshake's error (such as a 401) if the broker refuses it.
pub async fn connect_bearer(url: &str, token: &str) -> Result<Client, String> {
    let mut request = url.into_client_request().expect("a WebSocket URL");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("a header value"),
    );
    match timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Err(_) => panic!("no answer to the upgrade within {WAIT:?}"),
        Ok(Ok((ws, _))) => Ok(Client { ws, msgpack: false }),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// Connects a JSON client to `url` as it is (a `?token=` in it, or nothing); the handshake's
/// error if the broker refuses it.
pub async fn try_connect(url: &str) -> Result<Client, String> {
    match timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => panic!("no answer to the upgrade within {WAIT:?}"),
        Ok(Ok((ws, _))) => Ok(Client { ws, msgpack: false }),
        Ok(Err(e)) => Err(e.to_string()),
    }
}

/// The head of an HTTP answer: its status code and its lines, and the body when the server
/// ended the exchange.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends a hand-written `GET path` with `headers` (plus `Host` and `Connection: close`), reads
/// the answer to the end. Panics if none comes within [`WAIT`].
pub async fn http(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        // A reset after the answer is as good as an end here.
        let _ = tcp.read_to_end(&mut raw).await;
        raw
    };
    let raw = timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no complete answer to GET {path} within {WAIT:?}"));
    parse(&raw).unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
}

/// A WebSocket upgrade written by hand, as websocat or any other client sends it, with `headers`
/// added; returns the answer's head (the connection is dropped after it: a 101 is checked, not
/// used). Panics if no head comes within [`WAIT`].
pub async fn upgrade(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        // The head, and for a refusal whatever body follows until the server closes.
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = find(&raw, b"\r\n\r\n") {
                if raw.starts_with(b"HTTP/1.1 101") {
                    raw.truncate(end + 4);
                    break;
                }
                // A refusal: read its body as far as Content-Length says, if it says.
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if length.is_some_and(|n| raw.len() >= end + 4 + n) {
                    break;
                }
            }
        }
        raw
    };
    let raw = timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to the upgrade within {WAIT:?}"));
    parse(&raw).unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&raw)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

/// The value of a sample of `GET /metrics`, read with `token` as a bearer token.
pub async fn metric(addr: SocketAddr, token: &str, name: &str) -> f64 {
    let bearer = format!("Bearer {token}");
    let answer = http(addr, "/metrics", &[("Authorization", &bearer)]).await;
    assert_eq!(answer.status, 200, "GET /metrics answered {}", answer.head);
    sample(&answer.body, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}
