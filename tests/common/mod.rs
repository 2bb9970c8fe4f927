//! Shared helpers for the end-to-end tests: start the real `breadboard` binary on port 0 and
//! talk to it with real WebSocket clients (the broker's own test client, [`client`]). Every wait
//! is bounded by a timeout, and every child process is killed (by PID, through its handle) when
//! its guard drops, even on failure.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[path = "../../broker/tests/harness/client.rs"]
mod client;

pub use client::{assert_quiet, hello, retain_many, sample, sub, Client, End, Ws, WAIT};

pub mod auth;

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

    /// Drops the lines printed so far, without waiting.
    pub fn skip_lines(&self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Waits (up to `limit`) for a line containing `needle`; returns how long it took.
    pub fn time_to(&self, needle: &str, limit: std::time::Duration) -> std::time::Duration {
        self.time_to_any(&[needle], limit)
    }

    /// Waits (up to `limit`) for a line containing one of `needles`; returns how long it took.
    pub fn time_to_any(&self, needles: &[&str], limit: std::time::Duration) -> std::time::Duration {
        let started = std::time::Instant::now();
        while let Some(left) = limit.checked_sub(started.elapsed()) {
            match self.line(left) {
                Some(line) if needles.iter().any(|n| line.contains(n)) => return started.elapsed(),
                Some(_) => {}
                None => break,
            }
        }
        panic!("no line containing any of {needles:?} within {limit:?}");
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
        self.signal("-TERM");
    }

    /// Sends SIGINT, what Ctrl-C in a terminal does.
    pub fn interrupt(&self) {
        self.signal("-INT");
    }

    /// Sends `signal` (as `kill` spells it) to this child, by its own PID.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
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
    /// `ws` or `wss`, as the start line said.
    pub scheme: &'static str,
    /// With TLS: the `sha256:<hex>` of the start's `tls fingerprint` line, if it printed one.
    pub fingerprint: Option<String>,
}

impl Broker {
    /// Starts `breadboard broker -s 127.0.0.1 -p 0 --no-mdns <extra>`.
    pub fn start(extra: &[&str]) -> Broker {
        Self::start_on(0, extra)
    }

    /// Starts a broker on a given loopback port (0 for any).
    pub fn start_on(port: u16, extra: &[&str]) -> Broker {
        Self::from_proc(Proc::spawn(Self::command(port, extra)))
    }

    /// Starts a broker as [`Broker::start`] does, with `env` set for it.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut cmd = Self::command(0, extra);
        cmd.envs(env.iter().copied());
        Self::from_proc(Proc::spawn(cmd))
    }

    /// `breadboard broker -s 127.0.0.1 -p PORT --no-mdns [--in-memory] <extra>`.
    fn command(port: u16, extra: &[&str]) -> Command {
        let port = port.to_string();
        let mut args = vec!["broker", "-s", "127.0.0.1", "-p", &port, "--no-mdns"];
        // Nothing on disk unless the test gives a data directory of its own.
        if !extra.contains(&"--data-dir") {
            args.push("--in-memory");
        }
        args.extend_from_slice(extra);
        let mut cmd = Command::new(bin());
        cmd.args(&args).env("BREADBOARD_NO_MDNS", "1");
        cmd
    }

    /// Reads the start line of a broker already started (`listening on ws://ADDR` or
    /// `listening on wss://ADDR`, then, with TLS, `tls fingerprint sha256:HEX`).
    pub fn from_proc(proc: Proc) -> Broker {
        let line = proc.expect_line("listening on ");
        let rest = line
            .split_once("listening on ")
            .map_or("", |(_, rest)| rest.trim());
        let (scheme, addr) = if let Some(addr) = rest.strip_prefix("wss://") {
            ("wss", addr)
        } else if let Some(addr) = rest.strip_prefix("ws://") {
            ("ws", addr)
        } else {
            panic!("no ws:// or wss:// address in {line:?}")
        };
        let addr = addr
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|_| panic!("no address in {line:?}"));
        let fingerprint = (scheme == "wss").then(|| {
            let line = proc.expect_line("tls fingerprint ");
            line.split_once("tls fingerprint ")
                .map(|(_, fp)| fp.trim().to_string())
                .unwrap_or_default()
        });
        Broker {
            proc,
            addr,
            scheme,
            fingerprint,
        }
    }

    /// The broker's resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        self.proc.rss_bytes().expect("the broker's resident memory")
    }

    /// `ws://127.0.0.1:PORT`, or `wss://` when the broker serves TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// `http://127.0.0.1:PORT`, or `https://` when the broker serves TLS.
    pub fn http(&self) -> String {
        let scheme = if self.scheme == "wss" {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Sends SIGHUP: the broker reloads its auth file.
    pub fn reload(&self) {
        self.proc.signal("-HUP");
    }

    /// The value of one line of `GET /metrics` (see [`client::metric`]).
    pub async fn metric(&self, name: &str) -> f64 {
        client::metric(self.addr, name).await
    }
}

pub mod lan;
pub mod loopback_nats;
pub mod nats;
