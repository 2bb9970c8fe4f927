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
    pub fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start breadboard");
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
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("JSON frame")),
                Message::Binary(b) => {
                    return Some(rmp_serde::from_slice(&b).expect("MessagePack frame"))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Sends a frame and returns the broker's answer (the next frame).
    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }
}
