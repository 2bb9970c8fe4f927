//! A raw WebSocket client speaking the protocol as JSON text or MessagePack binary frames, built
//! from `serde_json` values (no `proto` types: these tests check the wire, not the library), and
//! plain HTTP on the broker's port.
//!
//! Shared, through `#[path]`, by the broker's in-process tests and the end-to-end tests of the
//! `breadboard` binary: both talk to a broker on a loopback port, only who started it differs.
//! Every item here is used by both. Every wait is bounded by [`WAIT`].

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client-side WebSocket, as `connect_async` returns it.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw WebSocket client speaking JSON text frames or MessagePack binary frames.
pub struct Client {
    pub ws: Ws,
    /// Whether [`Client::send`] encodes as MessagePack (binary) rather than JSON (text).
    pub msgpack: bool,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A close frame arrived, carrying this close code (`None` for a close frame without one).
    Close(Option<u16>),
    /// The socket ended, or failed, without a close frame; says how.
    Dropped(String),
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
        let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
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
        self.send_raw(msg).await;
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) {
        timeout(WAIT, self.ws.send(msg))
            .await
            .expect("send in time")
            .expect("send");
    }

    /// The next frame from the broker, decoded; panics after [`WAIT`] or if the connection ends.
    pub async fn recv(&mut self) -> Value {
        match self.recv_message(WAIT).await.expect("a frame in time") {
            Message::Close(close) => panic!("closed by {close:?} instead of a frame"),
            msg => decode(&msg),
        }
    }

    /// Sends a frame and returns the broker's answer (the next frame).
    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// The next text, binary or close message as it arrived (pings and pongs are skipped), for
    /// tests that check the encoding of a frame. `None` if nothing arrives within `wait` or the
    /// connection ends.
    pub async fn recv_message(&mut self, wait: Duration) -> Option<Message> {
        let read = async {
            loop {
                match self.ws.next().await?.ok()? {
                    msg @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)) => {
                        return Some(msg)
                    }
                    _ => continue,
                }
            }
        };
        timeout(wait, read).await.ok().flatten()
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
        timeout(wait, read).await.ok().flatten()
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

/// Sends a `ping` and asserts that the very next frame is its `pong`: nothing else was queued
/// for this client before it.
pub async fn assert_quiet(c: &mut Client, id: u64) {
    let got = c.call(json!({"op": "ping", "id": id})).await;
    assert_eq!(
        got,
        json!({"op": "pong", "id": id}),
        "expected nothing but the pong"
    );
}

/// Subscribes with an `id` and expects the `ok` right away (no retained value in between).
pub async fn sub(c: &mut Client, filter: &str, id: u64) {
    let got = c
        .call(json!({"op": "sub", "topic": filter, "id": id}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": id}), "sub {filter}");
}

/// Says `hello` with an `id` and expects the `ok`.
pub async fn hello(c: &mut Client, name: &str, kind: &str, id: u64) {
    let got = c
        .call(json!({"op": "hello", "name": name, "kind": kind, "id": id}))
        .await;
    assert_eq!(got, json!({"op": "ok", "id": id}), "hello {name}");
}

/// Publishes `count` retained values, the number `n` at `<prefix>/<n>`, without ids, as fast as the
/// socket takes them; returns once the broker has read them all (it answered a later ping).
pub async fn retain_many(c: &mut Client, prefix: &str, count: u64) {
    for n in 0..count {
        c.send(json!({"op": "pub", "topic": format!("{prefix}/{n}"), "data": n, "retain": true}))
            .await;
    }
    assert_quiet(c, 1).await;
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
    let raw = timeout(WAIT, exchange)
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

/// The value of one line of `GET /metrics` from `addr`, such as `breadboard_connections` or
/// `breadboard_errors_total{code="bad_topic"}`; panics if the broker does not report it.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let metrics = http_get(addr, "/metrics").await;
    assert_eq!(
        metrics.status, 200,
        "GET /metrics answered {}",
        metrics.head
    );
    sample(&metrics.body, name).unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// The value of the sample `name` (with its labels, if any) in Prometheus text format.
pub fn sample(text: &str, name: &str) -> Option<f64> {
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
