//! Shared helpers for the end-to-end tests: start the real `breadboard` binary on port 0 and
//! talk to it with real WebSocket clients. Every wait is bounded by a timeout, and every child
//! process is killed (by PID, through its handle) when its guard drops, even on failure.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_breadboard")
}

/// A child process killed when dropped. Its stdout lines are forwarded to a channel.
pub struct Proc {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `breadboard <args>` with stdout piped (lines readable with [`Proc::line`]).
    ///
    /// These run in the root network namespace, where no mDNS daemon may exist: besides the
    /// `--no-mdns` the tests pass, `BREADBOARD_NO_MDNS` makes sure of it.
    pub fn start(args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin());
        cmd.args(args).env("BREADBOARD_NO_MDNS", "1");
        Self::spawn(cmd)
    }

    /// Starts any command with stdout piped (lines readable with [`Proc::line`]).
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a child process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next stdout line, or `None` after `wait` (or when the process closed stdout).
    pub fn line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Waits for a stdout line containing `needle`; returns it. Panics after [`WAIT`].
    pub fn expect_line(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.line(left) {
                Some(line) if line.contains(needle) => return line,
                Some(_) => {}
                None => break,
            }
        }
        panic!("no line containing {needle:?} within {WAIT:?}");
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) {
        // SAFETY-free: `kill` the command, by our own child's PID.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `wait` for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker started on 127.0.0.1 with an OS-chosen port, no mDNS.
pub struct Broker {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Broker {
    /// Starts `breadboard broker -s 127.0.0.1 -p 0 --no-mdns <extra>`.
    pub fn start(extra: &[&str]) -> Broker {
        Self::start_on(0, extra)
    }

    /// Starts a broker on a given loopback port (0 for any).
    pub fn start_on(port: u16, extra: &[&str]) -> Broker {
        let port = port.to_string();
        let mut args = vec!["broker", "-s", "127.0.0.1", "-p", &port, "--no-mdns"];
        args.extend_from_slice(extra);
        let proc = Proc::start(&args);
        let line = proc.expect_line("listening on ws://");
        let addr = line
            .rsplit("ws://")
            .next()
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Broker { proc, addr }
    }

    /// `ws://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT`
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client speaking JSON text frames or MessagePack binary frames.
pub struct Client {
    pub ws: Ws,
    pub msgpack: bool,
}

impl Client {
    /// Connects a JSON client.
    pub async fn json(url: &str) -> Client {
        Self::connect(url, false).await
    }

    /// Connects a MessagePack client.
    pub async fn msgpack(url: &str) -> Client {
        Self::connect(url, true).await
    }

    async fn connect(url: &str, msgpack: bool) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Client { ws, msgpack }
    }

    /// Sends a frame (the JSON value, encoded as this client speaks).
    pub async fn send(&mut self, frame: Value) {
        let msg = if self.msgpack {
            Message::Binary(rmp_serde::to_vec_named(&frame).expect("encode").into())
        } else {
            Message::Text(frame.to_string().into())
        };
        self.ws.send(msg).await.expect("send");
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next frame from the broker, decoded; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a frame in time")
    }

    /// The next frame, or `None` if nothing arrives within `wait` (or the connection ends).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match self.recv_message(wait).await? {
            Message::Close(_) => None,
            msg => Some(decode(&msg)),
        }
    }

    /// Sends a frame and returns the broker's answer (the next frame).
    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A close frame arrived, carrying this close code (`None` for a close frame without one).
    Close(Option<u16>),
    /// The socket ended, or failed, without a close frame; says how.
    Dropped(String),
}

impl Proc {
    /// Sends SIGINT, what Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
    }
}

impl Broker {
    /// `GET path` on the broker's port, over plain HTTP.
    pub async fn http_get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path).await
    }

    /// The value of one line of `GET /metrics`, such as `breadboard_connections` or
    /// `breadboard_errors_total{code="bad_topic"}`; panics if the broker does not report it.
    pub async fn metric(&self, name: &str) -> f64 {
        let metrics = self.http_get("/metrics").await;
        assert_eq!(metrics.status, 200, "GET /metrics: {metrics:?}");
        metric(&metrics.body, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
    }
}

impl Client {
    /// The next text, binary or close message as it arrived (pings and pongs are skipped), for
    /// tests that check the encoding of a frame. `None` if nothing arrives within `wait` or the
    /// connection ends.
    pub async fn recv_message(&mut self, wait: Duration) -> Option<Message> {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(_) | Message::Binary(_) | Message::Close(_) => return Some(msg),
                _ => continue,
            }
        }
    }

    /// Reads and discards frames until the connection ends, for at most `max_frames` frames and
    /// `wait` in all; returns how it ended, or `None` if it was still open.
    pub async fn wait_end(&mut self, wait: Duration, max_frames: usize) -> Option<End> {
        let read = async {
            for _ in 0..max_frames {
                match self.ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return Some(End::Close(frame.map(|f| u16::from(f.code))))
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Some(End::Dropped(e.to_string())),
                    None => return Some(End::Dropped("end of stream".into())),
                }
            }
            None
        };
        tokio::time::timeout(wait, read).await.ok().flatten()
    }

    /// The client's own address, as the broker sees it (presence entries report it as `addr`).
    pub fn local_addr(&self) -> SocketAddr {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(tcp) => tcp.local_addr().expect("local address"),
            _ => panic!("not a plain TCP connection"),
        }
    }

    /// Drops the connection the rudest way: no close frame, and a TCP reset instead of a FIN
    /// (as when a device loses power mid-session and its stack later answers with RST).
    pub fn reset(self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            tcp.set_zero_linger().expect("SO_LINGER 0");
        }
        drop(self);
    }

    /// Shuts down the sending half of the TCP connection without a close frame (as when a
    /// client process dies: its kernel sends a FIN). The client can still read.
    pub async fn shutdown_tcp(&mut self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_mut() {
            tokio::io::AsyncWriteExt::shutdown(tcp)
                .await
                .expect("TCP shutdown");
        }
    }
}

/// Decodes a broker frame as the client received it: JSON from a text message, MessagePack
/// from a binary one. Panics on anything else.
pub fn decode(msg: &Message) -> Value {
    match msg {
        Message::Text(t) => serde_json::from_str(t).expect("JSON frame"),
        Message::Binary(b) => rmp_serde::from_slice(b).expect("MessagePack frame"),
        other => panic!("not a data frame: {other:?}"),
    }
}

/// An HTTP response, read to the end.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code, such as 200.
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    /// Everything after the blank line.
    pub body: String,
}

/// `GET path` from `addr` with a hand-written HTTP/1.1 request (`Connection: close`), read to
/// the end. Panics if no complete answer comes within [`WAIT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("an HTTP answer in time");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a blank line after the head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// The value of the sample `name` (with its labels, if any) in Prometheus text format.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

impl Proc {
    /// The process's resident memory in bytes (Linux `/proc/<pid>/status`, `VmRSS`), to check
    /// that memory stays bounded. `None` where that file is not available.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }
}
