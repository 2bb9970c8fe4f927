//! A real NATS cluster for the end-to-end tests, on a virtual LAN ([`Lan`]): one Debian
//! `nats-server` (2.9) per host, JetStream on (a store directory each, in the host's state
//! directory), clustered with routes to every other server, each in its own network namespace.
//! [`NatsCluster::start`] returns once the cluster has formed (routes complete, a JetStream meta
//! leader known to every server, `/healthz` ok); [`NatsCluster::kill`] stops one server with
//! SIGKILL, by its PID, as a crash would; everything stops when the cluster drops (which the
//! borrow of the `Lan` makes happen before the namespaces go).
//!
//! [`NatsClient`] speaks NATS's text protocol (`CONNECT`, `SUB`, `PUB`, `MSG`, `PING`/`PONG`)
//! by hand over a TCP socket opened inside a host ([`Lan::in_host`]): enough to watch or feed
//! subjects and to call the JetStream API, with no client library and nothing in the root
//! namespace. The monitoring endpoints (`/routez`, `/jsz`, `/healthz`) are read the same way.
//!
//! ```text
//!   host n1 ──┐            ┌── nats-server nats-n1  10.77.0.1:4222 (clients) :6222 (routes) :8222 (http)
//!   host n2 ──┼── br0 ─────┼── nats-server nats-n2  ...
//!   host n3 ──┘            └── nats-server nats-n3  ...     routes: a full mesh, JetStream R1..R3
//! ```
//!
//! `nats-server` comes from Debian (`scripts/test` installs it); without it [`can_run_nats`]
//! skips, except under `CI=true`, where that is a failure.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::lan::{can_build_lans, Lan};
use super::Proc;

/// Where every server listens for clients, on its host's address.
pub const CLIENT_PORT: u16 = 4222;
/// Where every server listens for routes from the others.
pub const ROUTE_PORT: u16 = 6222;
/// Where every server serves its monitoring endpoints (HTTP).
pub const HTTP_PORT: u16 = 8222;

/// How long a cluster may take to form, or to settle after a server is killed.
pub const FORM_WAIT: Duration = Duration::from_secs(15);

/// Whether this machine can run a NATS cluster on a virtual LAN (root, iproute2, `nats-server`);
/// under `CI=true` a "no" is a failure.
pub fn can_run_nats(test: &str) -> bool {
    if !can_build_lans(test) {
        return false;
    }
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return true;
    }
    let why = format!("{test}: needs nats-server (apt-get install nats-server; scripts/test does)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIPPED {why}");
    false
}

/// One `nats-server` of the cluster.
struct NatsServer {
    /// The LAN host it runs in.
    host: String,
    /// Its `server_name`, `nats-<host>`: what `/jsz` names the meta leader by.
    name: String,
    addr: Ipv4Addr,
    /// Its configuration, log and JetStream store.
    dir: PathBuf,
    /// `None` once killed.
    proc: Option<Proc>,
}

impl NatsServer {
    fn log(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }
}

/// A cluster of `nats-server`s with JetStream, one per host of a [`Lan`].
pub struct NatsCluster<'lan> {
    lan: &'lan Lan,
    /// The NATS cluster name (`cluster { name }`).
    name: String,
    servers: Vec<NatsServer>,
}

impl<'lan> NatsCluster<'lan> {
    /// Starts a server on each of `hosts` (which must be on `lan`) and waits until the cluster
    /// has formed. Panics, with the servers' logs, if it does not within [`FORM_WAIT`].
    pub fn start(lan: &'lan Lan, hosts: &[&str]) -> NatsCluster<'lan> {
        let name = "bbtest".to_string();
        let mut servers: Vec<NatsServer> = hosts
            .iter()
            .map(|host| NatsServer {
                host: host.to_string(),
                name: format!("nats-{host}"),
                addr: lan.addr(host),
                dir: lan.state_dir(host).join("nats"),
                proc: None,
            })
            .collect();
        for server in &servers {
            let routes: Vec<String> = servers
                .iter()
                .filter(|other| other.host != server.host)
                .map(|other| format!("\"nats://{}:{ROUTE_PORT}\"", other.addr))
                .collect();
            std::fs::create_dir_all(&server.dir).expect("a directory for nats-server");
            let config = format!(
                "server_name: {name}\n\
                 listen: \"{addr}:{CLIENT_PORT}\"\n\
                 http: \"{addr}:{HTTP_PORT}\"\n\
                 jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}}\n\
                 cluster {{\n  name: {cluster}\n  listen: \"{addr}:{ROUTE_PORT}\"\n  routes: [{routes}]\n}}\n",
                name = server.name,
                addr = server.addr,
                store = server.dir.join("jetstream").display(),
                cluster = name,
                routes = routes.join(", "),
            );
            std::fs::write(server.dir.join("nats-server.conf"), config)
                .expect("write the nats-server configuration");
        }
        for server in &mut servers {
            let conf = server.dir.join("nats-server.conf");
            let log = server.log();
            let (conf, log) = (conf.display().to_string(), log.display().to_string());
            server.proc = Some(lan.spawn(&server.host, "nats-server", &["-c", &conf, "-l", &log]));
        }
        let cluster = NatsCluster { lan, name, servers };
        let started = Instant::now();
        cluster.wait_formed();
        eprintln!(
            "NATS cluster of {} formed (routes, JetStream meta leader) in {:?}",
            hosts.len(),
            started.elapsed()
        );
        cluster
    }

    /// The NATS cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn server(&self, host: &str) -> &NatsServer {
        self.servers
            .iter()
            .find(|s| s.host == host)
            .unwrap_or_else(|| panic!("no NATS server on {host:?}"))
    }

    /// The client address of the server on `host`.
    pub fn addr(&self, host: &str) -> SocketAddr {
        SocketAddr::from((self.server(host).addr, CLIENT_PORT))
    }

    /// `nats://ADDR:4222,...` for every server, killed ones included: what a broker's
    /// `--cluster` takes.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://{}:{CLIENT_PORT}", s.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills the server on `host` with SIGKILL (by its PID) and waits for it to be gone, then
    /// for the others to agree on the smaller cluster (routes among themselves, a meta leader).
    pub fn kill(&mut self, host: &str) {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.host == host)
            .unwrap_or_else(|| panic!("no NATS server on {host:?}"));
        let mut proc = server
            .proc
            .take()
            .unwrap_or_else(|| panic!("the NATS server on {host:?} is already killed"));
        proc.child.kill().expect("SIGKILL nats-server");
        assert!(
            proc.wait_exit(Duration::from_secs(5)).is_some(),
            "nats-server on {host:?} survived SIGKILL"
        );
        self.wait_formed();
    }

    /// The hosts whose server runs.
    fn live(&self) -> impl Iterator<Item = &NatsServer> {
        self.servers.iter().filter(|s| s.proc.is_some())
    }

    /// Waits until every live server has routes to every other live one, knows a JetStream
    /// meta leader that is live, and answers `/healthz` with ok.
    fn wait_formed(&self) {
        let deadline = Instant::now() + FORM_WAIT;
        let live: Vec<&NatsServer> = self.live().collect();
        let names: Vec<&str> = live.iter().map(|s| s.name.as_str()).collect();
        let mut last = String::new();
        while Instant::now() < deadline {
            match live
                .iter()
                .try_for_each(|s| self.formed(s, live.len(), &names))
            {
                Ok(()) => return,
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the NATS cluster did not form within {FORM_WAIT:?}: {last}\n{}",
            self.logs()
        );
    }

    /// Whether `server` sees the cluster formed; why not otherwise.
    fn formed(&self, server: &NatsServer, live: usize, names: &[&str]) -> Result<(), String> {
        let routez = self.monitor(&server.host, "/routez")?;
        let routes = routez["num_routes"].as_u64().unwrap_or(0);
        if routes < live as u64 - 1 {
            return Err(format!("{}: {routes} routes of {}", server.name, live - 1));
        }
        let jsz = self.monitor(&server.host, "/jsz")?;
        let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
        if !names.contains(&leader) {
            return Err(format!("{}: meta leader {leader:?}", server.name));
        }
        let health = self.monitor(&server.host, "/healthz")?;
        if health["status"] != "ok" {
            return Err(format!("{}: /healthz {health}", server.name));
        }
        Ok(())
    }

    /// `GET path` from the monitoring endpoint of the server on `host`, as JSON.
    ///
    /// # Errors
    /// Why there is no JSON answer (not listening yet, another status, not JSON).
    pub fn monitor(&self, host: &str, path: &str) -> Result<Value, String> {
        let addr = SocketAddr::from((self.server(host).addr, HTTP_PORT));
        let response = self.lan.in_host(host, || http_get(addr, path))?;
        serde_json::from_str(&response).map_err(|e| format!("GET {path}: {e}: {response}"))
    }

    /// A client connected, from a socket in `from`, to the server on `host`.
    pub fn client(&self, from: &str, host: &str) -> NatsClient {
        let addr = self.addr(host);
        let stream = self.lan.in_host(from, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to NATS at {addr}: {e}"))
        });
        NatsClient::connect(stream)
    }

    /// The end of every server's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for server in &self.servers {
            let log = std::fs::read_to_string(server.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!("--- {} ({}):\n{tail}\n", server.name, server.host));
        }
        out
    }
}

impl Drop for NatsCluster<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // Each `Proc` kills its own child (by PID) and reaps it.
        for server in &mut self.servers {
            drop(server.proc.take());
        }
    }
}

/// `GET path` over HTTP/1.0 (the server closes when done); the body of a 200.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no head in {response:?}"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("GET {path}: {head}: {body}"));
    }
    Ok(body.to_string())
}

/// A message received by a [`NatsClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsMsg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    pub payload: Vec<u8>,
}

impl NatsMsg {
    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What the server sends, as far as a test client cares.
enum ServerOp {
    Msg(NatsMsg),
    Pong,
}

/// A blocking NATS client speaking the text protocol by hand: one connection, its own
/// subscription ids, every wait bounded.
pub struct NatsClient {
    stream: TcpStream,
    /// Bytes read and not parsed yet.
    buf: Vec<u8>,
    /// Messages that arrived while waiting for something else (a `PONG`, a reply).
    queued: VecDeque<NatsMsg>,
    next_sid: u64,
    /// The server's `INFO`, as JSON.
    pub info: Value,
}

impl NatsClient {
    /// Reads the server's `INFO`, sends `CONNECT` and waits for the `PONG` of a `PING`.
    pub fn connect(stream: TcpStream) -> NatsClient {
        let mut client = NatsClient {
            stream,
            buf: Vec::new(),
            queued: VecDeque::new(),
            next_sid: 1,
            info: Value::Null,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let line = loop {
            if let Some(line) = client.take_line() {
                break line;
            }
            assert!(client.fill(deadline), "no INFO from the NATS server");
        };
        let info = line
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("expected INFO, got {line:?}"));
        client.info = serde_json::from_str(info).expect("INFO is JSON");
        client.send(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"breadboard-test\",\"lang\":\"rust\",\"version\":\"0\",\"protocol\":1,\"headers\":false}\r\n",
        );
        client.flush();
        client
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to NATS");
    }

    /// Subscribes to `subject` (a pattern: `*` and `>` allowed); returns the subscription id.
    pub fn subscribe(&mut self, subject: &str) -> u64 {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes());
        sid
    }

    /// Publishes `payload` on `subject`.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) {
        self.publish_to(subject, None, payload);
    }

    fn publish_to(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let mut frame = match reply {
            Some(reply) => format!("PUB {subject} {reply} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        }
        .into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame);
    }

    /// A `PING`, answered: the server has processed everything sent before it (an `-ERR`
    /// panics). Messages arriving meanwhile are kept for [`NatsClient::next_message`].
    pub fn flush(&mut self) {
        self.send(b"PING\r\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.next_op(deadline) {
                Some(ServerOp::Pong) => return,
                Some(ServerOp::Msg(msg)) => self.queued.push_back(msg),
                None => panic!("no PONG from the NATS server within 5 s"),
            }
        }
    }

    /// The next message on any subscription, or `None` after `wait`.
    pub fn next_message(&mut self, wait: Duration) -> Option<NatsMsg> {
        if let Some(msg) = self.queued.pop_front() {
            return Some(msg);
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.next_op(deadline)? {
                ServerOp::Msg(msg) => return Some(msg),
                ServerOp::Pong => {}
            }
        }
    }

    /// The next message, which must come within `wait`.
    pub fn expect_message(&mut self, wait: Duration) -> NatsMsg {
        self.next_message(wait)
            .unwrap_or_else(|| panic!("no NATS message within {wait:?}"))
    }

    /// Publishes `payload` on `subject` with a reply inbox and waits for the one reply (the
    /// JetStream API answers this way).
    pub fn request(&mut self, subject: &str, payload: &[u8], wait: Duration) -> NatsMsg {
        self.try_request(subject, payload, wait)
            .unwrap_or_else(|| panic!("no reply to {subject} within {wait:?}"))
    }

    /// Like [`request`](Self::request), but `None` when no reply comes within `wait` (a
    /// JetStream API whose leader was just lost stays silent until another is elected).
    pub fn try_request(
        &mut self,
        subject: &str,
        payload: &[u8],
        wait: Duration,
    ) -> Option<NatsMsg> {
        let inbox = format!("_INBOX.bbtest.{}", self.next_sid);
        let sid = self.subscribe(&inbox);
        self.publish_to(subject, Some(&inbox), payload);
        let deadline = Instant::now() + wait;
        let reply = loop {
            match self.next_op(deadline) {
                Some(ServerOp::Msg(msg)) if msg.sid == sid => break Some(msg),
                Some(ServerOp::Msg(msg)) => self.queued.push_back(msg),
                Some(ServerOp::Pong) => {}
                None => break None,
            }
        };
        self.send(format!("UNSUB {sid}\r\n").as_bytes());
        reply
    }

    /// A JetStream API call (`$JS.API.<api>`) with a JSON body; its JSON answer, which must
    /// hold no `error`.
    pub fn jetstream(&mut self, api: &str, body: &Value) -> Value {
        let subject = format!("$JS.API.{api}");
        let reply = self.request(
            &subject,
            body.to_string().as_bytes(),
            Duration::from_secs(10),
        );
        let answer: Value = serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{subject}: {e}: {}", reply.text()));
        assert!(answer.get("error").is_none(), "{subject}: {answer}");
        answer
    }

    /// Makes sure that subscriptions this client made before reach `publisher`'s server:
    /// subscribes to a probe subject and has `publisher` publish on it until a probe arrives.
    /// A server forwards the interest it learns in order over each route, so once the probe's
    /// interest has crossed, so has every subscription before it.
    pub fn sync_interest(&mut self, publisher: &mut NatsClient) {
        let probe = format!("_bbtest.probe.{}", self.next_sid);
        let sid = self.subscribe(&probe);
        self.flush();
        let deadline = Instant::now() + FORM_WAIT;
        'probing: while Instant::now() < deadline {
            publisher.publish(&probe, b"probe");
            publisher.flush();
            let until = Instant::now() + Duration::from_millis(50);
            while let Some(op) = self.next_op(until) {
                match op {
                    ServerOp::Msg(msg) if msg.sid == sid => break 'probing,
                    ServerOp::Msg(msg) => self.queued.push_back(msg),
                    ServerOp::Pong => {}
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "interest did not cross the cluster within {FORM_WAIT:?}"
        );
        self.send(format!("UNSUB {sid}\r\n").as_bytes());
        self.flush();
        // Probes published before the first one arrived may still be on their way.
        self.queued.retain(|m| m.sid != sid);
    }

    /// Reads more bytes, waiting until `deadline`; false if none came.
    fn fill(&mut self, deadline: Instant) -> bool {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("the NATS server closed the connection"),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("read from NATS: {e}"),
        }
    }

    /// The first whole line in the buffer, without its CRLF.
    fn take_line(&mut self) -> Option<String> {
        let at = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
        self.buf.drain(..at + 2);
        Some(line)
    }

    /// The next `MSG` or `PONG`, answering `PING`s and passing over `INFO` and `+OK`; `None`
    /// at `deadline`.
    fn next_op(&mut self, deadline: Instant) -> Option<ServerOp> {
        loop {
            if let Some(op) = self.parse_op() {
                return Some(op);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// One operation out of the buffer, if a whole one is there.
    fn parse_op(&mut self) -> Option<ServerOp> {
        loop {
            let at = self.buf.windows(2).position(|w| w == b"\r\n")?;
            let line = String::from_utf8_lossy(&self.buf[..at]).into_owned();
            if let Some(args) = line.strip_prefix("MSG ") {
                let args: Vec<&str> = args.split(' ').collect();
                let (subject, sid, reply, size) = match args[..] {
                    [subject, sid, size] => (subject, sid, None, size),
                    [subject, sid, reply, size] => (subject, sid, Some(reply), size),
                    _ => panic!("a MSG line that does not parse: {line:?}"),
                };
                let size: usize = size.parse().expect("a MSG size");
                let end = at + 2 + size;
                if self.buf.len() < end + 2 {
                    return None;
                }
                let payload = self.buf[at + 2..end].to_vec();
                self.buf.drain(..end + 2);
                return Some(ServerOp::Msg(NatsMsg {
                    subject: subject.to_string(),
                    sid: sid.parse().expect("a MSG sid"),
                    reply: reply.map(String::from),
                    payload,
                }));
            }
            self.buf.drain(..at + 2);
            match line.as_str() {
                "PING" => self.send(b"PONG\r\n"),
                "PONG" => return Some(ServerOp::Pong),
                "+OK" => {}
                l if l.starts_with("INFO ") => {}
                l if l.starts_with("-ERR") => panic!("the NATS server said {l}"),
                l => panic!("an unexpected line from the NATS server: {l:?}"),
            }
        }
    }
}
